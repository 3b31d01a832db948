#!/usr/bin/env bash
# Installs the Debian packages cleave needs that are missing. Idempotent; quiet when nothing is to do.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libtorch-dev                                   # LibTorch 1.13 (CPU): models, autograd
  libgloo-dev                                    # gloo headers for c10d ProcessGroupGloo (server replicas)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler  # the wire protocol
  libssl-dev                                     # OpenSSL 3: certificates (cleave-provision)
  libgtest-dev libbenchmark-dev                  # tests, benchmarks
  dataset-fashion-mnist                          # /usr/share/datasets/fashion-mnist
  libcli11-dev libspdlog-dev nlohmann-json3-dev  # flags, logging, JSON metrics
  prometheus-cpp-dev zlib1g-dev libpng-dev       # metrics endpoint, gzip IDX files, PNG in/out
  libjpeg62-turbo-dev                            # JPEG files in image folders (--dataset images)
  gnuplot-nox                                    # leakage-vs-accuracy plots
  clang-16 libfuzzer-16-dev libclang-rt-16-dev  # the codec fuzzer (+ sanitizer runtimes)
  universal-ctags                                # function lengths (check_function_length.sh)
  python3-torch                                  # tools/export/cleave_export.py and its tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
