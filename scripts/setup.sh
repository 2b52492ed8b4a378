#!/usr/bin/env bash
# Idempotent set-up: the pinned venv, the real tritonserver (from nvidia-pytriton) with a Python
# backend directory, perf_analyzer (from tritonclient 2.51.0) with the two libraries it needs, and
# checkov (its own venv) for the Kubernetes manifest tests, Model Analyzer (its own venv), the peer
# `make bench-peer` judges the tuner against, and Debian's redis-server (the fleet's shared cache, unpacked).
# A second run checks stamps and does nothing slow.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
TOOLS=$ROOT/.tools
PY=${PYTHON:-python3}
# the checkout path is in the stamp: a .venv/.tools copied from another checkout points at that one
stamp_want=$( (sha256sum requirements.lock requirements-checkov.lock requirements-model-analyzer.lock pyproject.toml scripts/setup.sh; echo "$ROOT") | sha256sum | cut -c1-16)

if [[ -f $VENV/.stamp && $(cat "$VENV/.stamp") == "$stamp_want" && -x $TOOLS/bin/perf_analyzer && -x $TOOLS/bin/checkov && -x $TOOLS/bin/model-analyzer && -x $TOOLS/bin/redis-server ]]; then
  echo "setup: up to date ($VENV)"
  exit 0
fi

t0=$(date +%s)
if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
echo "setup: installing pinned dependencies (torch 2.13.0 CPU comes from this machine's disk)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -m pip check

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
TS=$SITE/pytriton/tritonserver
[[ -x $TS/bin/tritonserver ]] || { echo "setup: tritonserver missing from nvidia-pytriton at $TS" >&2; exit 1; }

# Python backend directory: symlinks (a copy breaks the stub's RPATH and the model load hangs).
mkdir -p "$TOOLS/backends/python" "$TOOLS/bin" "$TOOLS/lib"
ln -sfn "$TS/backends/python/libtriton_python.so" "$TOOLS/backends/python/libtriton_python.so"
ln -sfn "$TS/backends/python/triton_python_backend_utils.py" "$TOOLS/backends/python/triton_python_backend_utils.py"
ln -sfn "$TS/python_backend_stubs/$PYVER/triton_python_backend_stub" "$TOOLS/backends/python/triton_python_backend_stub"
ln -sfn "$TS/bin/tritonserver" "$TOOLS/bin/tritonserver"
ln -sfn "$TS/caches" "$TOOLS/caches"

# perf_analyzer needs libb64.so.0d (Debian libb64-0d, unpacked without installing) and libcudart.so.12.
if [[ ! -e $TOOLS/lib/libb64.so.0d ]]; then
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download libb64-0d >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get download libb64-0d >/dev/null; }; } )
  dpkg-deb -x "$tmp"/libb64-0d_*.deb "$tmp/x"
  cp -L "$tmp"/x/usr/lib/*/libb64.so.0d "$TOOLS/lib/"
  rm -rf "$tmp"
fi
# qemu-x86_64 (Debian qemu-user-static, one static binary unpacked without installing): the tests run the
# INT8 checks under `-cpu Haswell`, so every machine exercises ONNX Runtime's AVX2 (saturating) kernels too.
if [[ ! -x $TOOLS/bin/qemu-x86_64 ]]; then
  tmp=$(mktemp -d)
  if ( cd "$tmp" && { apt-get download qemu-user-static >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get download qemu-user-static >/dev/null 2>&1; }; } ); then
    dpkg-deb -x "$tmp"/qemu-user-static_*.deb "$tmp/x"
    cp "$tmp/x/usr/bin/qemu-x86_64-static" "$TOOLS/bin/qemu-x86_64"
  else
    echo "setup: qemu-user-static not available from apt: the -cpu Haswell INT8 tests will skip" >&2
  fi
  rm -rf "$tmp"
fi
# redis-server 7.0 (Debian redis-server + redis-tools, whose redis-check-rdb is the server binary, with the
# two libraries it needs that a slim image lacks: libjemalloc2, liblzf1), unpacked without installing: the
# fleet's shared response and semantic cache (clients/redis_cache.py starts it on a free loopback port).
if [[ ! -x $TOOLS/redis/redis-server ]]; then
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download redis-server redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1 || \
      { apt-get update >/dev/null 2>&1 && apt-get download redis-server redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1; }; } ) || {
    echo "setup: redis-server could not be downloaded with apt-get download; the shared-cache tests need it" >&2; exit 1; }
  for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/x"; done
  mkdir -p "$TOOLS/redis/lib"
  cp -L "$tmp"/x/usr/lib/*/libjemalloc.so.2 "$tmp"/x/usr/lib/*/liblzf.so.1 "$TOOLS/redis/lib/"
  cp -L "$tmp/x/usr/bin/redis-check-rdb" "$TOOLS/redis/redis-server"     # the binary picks its role from its name
  rm -rf "$tmp"
fi
cat > "$TOOLS/bin/redis-server" <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$TOOLS/redis/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$TOOLS/redis/redis-server" "\$@"
WRAP
chmod +x "$TOOLS/bin/redis-server"
"$TOOLS/bin/redis-server" --version >/dev/null || { echo "setup: redis-server does not start; run $TOOLS/bin/redis-server --version" >&2; exit 1; }
# Open MPI 4.1 for Model Analyzer's concurrent mode (`make bench-fleet-peer`: one perf_analyzer per model under
# mpiexec; perf_analyzer --enable-mpi dlopens libmpi.so): a system mpiexec if there is one, else Debian's unpacked
# without installing (relocated with OPAL_PREFIX; only what this image lacks). Optional: where neither can be had,
# setup says so and bench-fleet-peer refuses in one line; everything else works without it.
MPI_PKGS="openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 \
libfabric1 libibverbs1 ibverbs-providers librdmacm1 libucx0 libmunge2 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1"
MPI_LIB=$TOOLS/mpi/usr/lib/$(uname -m)-linux-gnu
if command -v mpiexec >/dev/null 2>&1 && [[ $(command -v mpiexec) != $TOOLS/bin/mpiexec ]]; then
  cat > "$TOOLS/bin/mpiexec" <<WRAP
#!/usr/bin/env bash
export OMPI_MCA_rmaps_base_oversubscribe=1
exec "$(command -v mpiexec)" "\$@"
WRAP
  chmod +x "$TOOLS/bin/mpiexec"
else
  if [[ ! -x $TOOLS/mpi/usr/bin/mpiexec.openmpi ]]; then
    tmp=$(mktemp -d)
    want=$(for p in $MPI_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if ( cd "$tmp" && { apt-get download $want >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get download $want >/dev/null 2>&1; }; } ); then
      rm -rf "$TOOLS/mpi"
      for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$TOOLS/mpi"; done
      ln -sfn libmpi.so.40 "$MPI_LIB/libmpi.so" 2>/dev/null || true
    fi
    rm -rf "$tmp"
  fi
  if [[ -x $TOOLS/mpi/usr/bin/mpiexec.openmpi ]]; then
    cat > "$TOOLS/bin/mpiexec" <<WRAP
#!/usr/bin/env bash
export OPAL_PREFIX="$TOOLS/mpi/usr" PMIX_MCA_pcompress_base_silence_warning=1 OMPI_MCA_rmaps_base_oversubscribe=1
export LD_LIBRARY_PATH="$MPI_LIB:$MPI_LIB/openmpi/lib:$TOOLS/mpi/lib/$(uname -m)-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$TOOLS/mpi/usr/bin/mpiexec.openmpi" "\$@"
WRAP
    chmod +x "$TOOLS/bin/mpiexec"
  fi
fi
if [[ -x $TOOLS/bin/mpiexec ]] && ! "$TOOLS/bin/mpiexec" --allow-run-as-root -n 1 true >/dev/null 2>&1; then
  rm -f "$TOOLS/bin/mpiexec"
fi
[[ -x $TOOLS/bin/mpiexec ]] || echo "setup: no mpiexec (Open MPI could not be had with apt-get download): make bench-fleet-peer will refuse; the rest works" >&2
ln -sfn "$SITE/nvidia/cuda_runtime/lib/libcudart.so.12" "$TOOLS/lib/libcudart.so.12"
cat > "$TOOLS/bin/perf_analyzer" <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$TOOLS/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$VENV/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$TOOLS/bin/perf_analyzer"
"$TOOLS/bin/perf_analyzer" --version >/dev/null 2>&1 || "$TOOLS/bin/perf_analyzer" --help >/dev/null 2>&1 || {
  echo "setup: perf_analyzer does not start; run $TOOLS/bin/perf_analyzer --help to see why" >&2; exit 1; }

# checkov, the IaC scanner the manifest tests run, in a venv of its own (pinned, offline at run time).
if [[ ! -x $TOOLS/checkov/bin/checkov ]] || ! cmp -s requirements-checkov.lock "$TOOLS/checkov/.lock"; then
  echo "setup: installing checkov into $TOOLS/checkov"
  "$PY" -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip install -q --disable-pip-version-check -r requirements-checkov.lock 2>&1 | grep -v "is ignored" || true
  cp requirements-checkov.lock "$TOOLS/checkov/.lock"
fi
ln -sfn "$TOOLS/checkov/bin/checkov" "$TOOLS/bin/checkov"
"$TOOLS/bin/checkov" --version >/dev/null || { echo "setup: checkov does not start" >&2; exit 1; }

# Model Analyzer, the tuner's peer (make bench-peer), in a venv of its own: its tree (numba, optuna, docker, ...)
# stays out of the project's venv; tritonclient 2.51.0 pinned there too (a newer one's perf_analyzer needs glibc 2.38).
MA=$TOOLS/model-analyzer
if [[ ! -x $MA/bin/model-analyzer ]] || ! cmp -s requirements-model-analyzer.lock "$MA/.lock"; then
  echo "setup: installing Model Analyzer into $MA"
  "$PY" -m venv "$MA"
  "$MA/bin/python" -m pip install -q --disable-pip-version-check -r requirements-model-analyzer.lock 2>&1 | grep -v "is ignored" || true
  cp requirements-model-analyzer.lock "$MA/.lock"
fi
ln -sfn "$MA/bin/model-analyzer" "$TOOLS/bin/model-analyzer"
"$TOOLS/bin/model-analyzer" --help >/dev/null || { echo "setup: model-analyzer does not start" >&2; exit 1; }

echo "$stamp_want" > "$VENV/.stamp"
echo "setup: done in $(( $(date +%s) - t0 )) s (tritonserver: $TOOLS/bin/tritonserver, perf_analyzer: $TOOLS/bin/perf_analyzer)"
