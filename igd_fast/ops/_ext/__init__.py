"""`cpu` and `cuda` backends: thin calls into the compiled ops of igd_fast._C."""
