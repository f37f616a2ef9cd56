# slicewise on a GPU server. Build: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t slicewise .
# Run:   docker run --gpus all -p 8000:8000 -v /srv/slicewise:/workspace slicewise
# First start of an empty workspace: the initial user 'admin' gets the password of the file named by
# SLICEWISE_ADMIN_PASSWORD_FILE (a Docker secret, e.g. -e SLICEWISE_ADMIN_PASSWORD_FILE=/run/secrets/admin),
# else a one-time setup token is printed to the log (--setup-token below). See docs/deployment.md.
FROM python:3.11-slim-bookworm

# torch comes from this index (the lock pins the CPU build, which only the PyTorch CPU index serves off this machine)
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ENV GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1

WORKDIR /opt/slicewise
COPY pyproject.toml README.md requirements-pip.lock requirements.lock ./
COPY scripts ./scripts
COPY app ./app
COPY model ./model
COPY frontend ./frontend
COPY data ./data

# The same install step as the README's: scripts/setup.sh from the hash-pinned requirements.lock
# (torch from TORCH_INDEX_URL: the CPU index by default, a CUDA one for a GPU image).
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash scripts/setup.sh

RUN useradd --create-home --uid 1000 slicewise && mkdir -p /workspace && chown slicewise /workspace
USER 1000
EXPOSE 8000
VOLUME ["/workspace"]
# Binding beyond loopback needs users: the first start makes the admin (see above).
CMD ["/opt/slicewise/.venv/bin/slicewise", "serve", "--workspace", "/workspace", "--host", "0.0.0.0", "--port", "8000", "--device", "auto", "--setup-token"]
