#!/usr/bin/env python3
"""Times torch.topk(|x|) on the GPU at the sizes of bench_gaussiank_cuda (n = 2^24, 2^26,
densities 0.01, 0.1, 0.25), for the same-run comparison on the GPU machine:

    python3 bench/torch_topk.py && build/bin/bench_gaussiank_cuda
"""
import torch


def main():
    if not torch.cuda.is_available():
        print("torch_topk.py: no CUDA device; nothing to measure")
        return
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    print(f"{'n':>10} {'density':>8} {'k':>10} {'ms/call':>12}")
    for log_n, density in [(l, d) for l in (24, 26) for d in (0.01, 0.1, 0.25)]:
        n = 1 << log_n
        k = int(density * n)
        torch.manual_seed(1)
        x = torch.randn(n, device="cuda")
        torch.topk(x.abs(), k)  # warm-up
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        repeats = 20
        start.record()
        for _ in range(repeats):
            torch.topk(x.abs(), k)
        stop.record()
        torch.cuda.synchronize()
        print(f"{n:>10} {density:>8.2f} {k:>10} {start.elapsed_time(stop) / repeats:>12.3f}")


if __name__ == "__main__":
    main()
