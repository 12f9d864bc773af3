#!/bin/sh
# Rebuild ntp_xdp.bpf.o from ntp_xdp.bpf.c (needs clang, llvm and libbpf-dev). The object is
# committed so installs need no compiler; tests/daemon/test_xdp_object.py rebuilds it and
# fails if the committed one differs. Run from any directory.
set -eu
cd "$(dirname "$0")"
clang -O2 -g -target bpf -fdebug-compilation-dir=. \
    -I"/usr/include/$(uname -m)-linux-gnu" -c ntp_xdp.bpf.c -o "${1:-ntp_xdp.bpf.o}"
llvm-strip -g "${1:-ntp_xdp.bpf.o}"
