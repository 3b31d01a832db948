#!/usr/bin/env python3
"""Times torch.topk(|x|) on the GPU at the sizes of bench_gaussiank_cuda (n = 2^24, 2^26,
density 0.01), for the same-run comparison on the GPU machine:

    python3 bench/torch_topk.py && build/bin/bench_gaussiank_cuda
"""
import torch


def main():
    if not torch.cuda.is_available():
        print("torch_topk.py: no CUDA device; nothing to measure")
        return
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    print(f"{'n':>10} {'k':>10} {'ms/call':>12}")
    for log_n in (24, 26):
        n = 1 << log_n
        k = int(0.01 * n)
        x = torch.randn(n, device="cuda")
        torch.topk(x.abs(), k)  # warm-up
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        repeats = 20
        start.record()
        for _ in range(repeats):
            torch.topk(x.abs(), k)
        stop.record()
        torch.cuda.synchronize()
        print(f"{n:>10} {k:>10} {start.elapsed_time(stop) / repeats:>12.3f}")


if __name__ == "__main__":
    main()
