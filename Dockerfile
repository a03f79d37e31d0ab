# The relayllm cloud service (gRPC on 50051, Prometheus metrics on 9464).
#   docker build -t relayllm-cloud .
#   docker run -p 50051:50051 -v /models:/models relayllm-cloud --model /models/llm.gguf
# As a gateway in front of vLLM, see compose.yaml and docs/cloud.md.
FROM python:3.11-slim

# llama-cpp-python builds llama.cpp from source
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY protos protos
COPY edge edge
COPY cloud cloud
COPY training training
# the cloud extra without torch: llama.cpp, the gateway (httpx) and metrics
RUN pip install --no-cache-dir . "llama-cpp-python==0.3.36" "prometheus-client>=0.20" "httpx>=0.27"

RUN useradd --create-home relay
USER relay
ENV RELAYLLM_HOST=0.0.0.0 RELAYLLM_PORT=50051 RELAYLLM_METRICS_PORT=9464 RELAYLLM_METRICS_HOST=0.0.0.0
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["relayllm", "serve"]
