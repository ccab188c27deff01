"""``igd-fast serve``: a trained model directory behind HTTP (FastAPI on uvicorn).

One model worker thread scores what the requests bring, several requests per forward pass
(:mod:`.batching`); the scoring is the :class:`igd_fast.score.Scorer`'s own
(``Scorer.predict`` on the decoded images), so an image sent over HTTP scores exactly as
the same file does with ``igd-fast score``.

* :mod:`.settings`: every limit and batching setting, with its default (the CLI's flags come from here)
* :mod:`.auth`: API keys and the loopback rule of ``--no-auth``
* :mod:`.bodies`: request body -> decoded image (content type, size, pixel limit), or an :class:`.errors.ApiError`
* :mod:`.batching`: the micro-batcher (asyncio futures in, one worker thread, batches out)
* :mod:`.metrics`: the Prometheus metrics
* :mod:`.encode`: a prediction -> JSON (the map and mask as base64 PNG)
* :mod:`.app`: the FastAPI application over a scorer (``create_app(scorer, settings)``)

Only :mod:`.settings` and :mod:`.auth` import without the ``serve`` extra (FastAPI, uvicorn,
prometheus-client), so ``igd-fast serve`` can say what to install.
"""
