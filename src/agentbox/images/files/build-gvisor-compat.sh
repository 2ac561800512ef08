#!/bin/sh
# Compiles gvisor-compat.c into /out/gvisor-compat.so in the throw-away first stage of the runtime image,
# with the base's own compiler and libc when it has them (python:3.x, nikolaik/python-nodejs), else
# with Debian's/Ubuntu's gcc fetched for this stage only. Nothing of this stage but the .so reaches the
# runtime image. Flags keep the output a function of the source and toolchain alone (no build paths).
set -eu
if ! command -v cc >/dev/null 2>&1 || [ ! -e /usr/include/dlfcn.h ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends gcc libc6-dev
fi
mkdir -p /out
cd /src
cc -O2 -Wall -Werror -shared -fPIC -ffile-prefix-map=/src=. -Wl,--build-id=none \
    -o /out/gvisor-compat.so gvisor-compat.c -ldl
