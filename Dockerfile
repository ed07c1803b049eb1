# Worker image: the farm with a CUDA build of torch. One container per GPU (see compose.yml).
FROM python:3.11-slim

# torch first, from PyTorch's CUDA wheel index; constraints.txt's torch==2.13.0 then matches it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY farm ./farm
COPY engine ./engine
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -c constraints.txt -e ".[fleet]"

# weights and the farm home live on volumes
ENV FARM_HOME=/farm FARM_MODEL_CACHE=/models HF_HOME=/models/hf PYTHONUNBUFFERED=1
VOLUME ["/farm", "/models"]
CMD ["farm", "worker", "--devices", "0"]
