from igd_fast._malloc import tune_malloc

# Same allocator settings for ours and every peer: without them, glibc's per-call
# mmap/munmap of large tensors adds page faults that swamp the kernels being timed.
tune_malloc()
