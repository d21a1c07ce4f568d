# The pipeline in a container: `docker build -t hits-occlusion .` then
#   docker run --rm -v "$PWD/data:/project/data" -v "$PWD/models:/project/models" \
#     -v "$PWD/mlruns:/project/mlruns" hits-occlusion
# runs `dvc repro` on the embedded defaults, with data, models and the MLflow store on the host.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /project

# Dependencies first (pinned), so code changes do not reinstall TensorFlow.
COPY pyproject.toml constraints.txt README.md ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir -c constraints.txt .

# The project itself: params, dvc.yaml, the DVC and git metadata dvc repro needs.
COPY . .

RUN useradd --create-home --uid 1000 pipeline && chown -R pipeline /project
USER 1000

VOLUME ["/project/data", "/project/models", "/project/mlruns"]
CMD ["dvc", "repro"]
