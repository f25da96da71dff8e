FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY campusguard campusguard
COPY contract contract
COPY drivers drivers
COPY edge edge
COPY gateway gateway
COPY simulators simulators
COPY webkit webkit
RUN pip install --no-cache-dir ".[postgres]"
RUN mkdir -p /var/lib/campusguard && chown nobody /var/lib/campusguard
USER nobody
