# opsd: one image for the API server, the trainer worker and migrations (compose.yaml).
#
#   docker build -t opsd .                                            # CPU torch (default)
#   docker build -t opsd:cuda \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .  # CUDA torch for a GPU worker
#
# The sandbox runs model-written code with bubblewrap inside the container; that needs
# user namespaces, which Docker's default seccomp and AppArmor profiles and masked /proc
# paths forbid: run it with the `security_opt` of compose.yaml (README, "Running the service").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# bubblewrap: the sandbox's local backend (no other system package is needed).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the index that picks its variant (cpu, cu126, cu128, ...).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# The other dependencies, in their own layer: a source change does not reinstall them.
WORKDIR /opt/opsd
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY service ./service
COPY envs ./envs
COPY trainer ./trainer
COPY sandbox ./sandbox
COPY tiny ./tiny
RUN pip install --no-deps . && rm -rf build

# A non-root user; /data (checkpoints, the Hugging Face cache) is the shared volume's
# mount point, owned by that user so that a new named volume starts out writable.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin opsd \
    && mkdir /data && chown opsd:opsd /data
USER opsd
WORKDIR /data
ENV OPSD_DATA_DIR=/data \
    HF_HOME=/data/huggingface

EXPOSE 8000
ENTRYPOINT ["opsd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
