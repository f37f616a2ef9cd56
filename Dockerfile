# slicewise on a GPU server. Build: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t slicewise .
# Run:   docker run --gpus all -p 8000:8000 -v /srv/slicewise:/workspace slicewise
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=""
ENV GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1

WORKDIR /opt/slicewise
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY app ./app
COPY model ./model
COPY frontend ./frontend
COPY data ./data

# The same install step as the README's: scripts/setup.sh (CUDA torch when TORCH_INDEX_URL is set).
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash scripts/setup.sh

RUN useradd --create-home --uid 1000 slicewise && mkdir -p /workspace && chown slicewise /workspace
USER 1000
EXPOSE 8000
VOLUME ["/workspace"]
# Binding beyond loopback needs credentials once auth exists; see docs/deployment.md.
CMD ["/opt/slicewise/.venv/bin/slicewise", "serve", "--workspace", "/workspace", "--host", "0.0.0.0", "--port", "8000", "--device", "auto"]
