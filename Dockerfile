FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --home-dir /srv/smtpconf --uid 10001 smtpconf
WORKDIR /srv/smtpconf

COPY pyproject.toml README.md openapi.yaml ./
COPY service ./service
COPY providers ./providers
RUN pip install . && rm -rf build *.egg-info

USER smtpconf
# The database defaults to SQLite under ./var/; mount a volume there or set
# SMTPCONF_DATABASE_URL. SMTPCONF_MASTER_KEY or SMTPCONF_MASTER_KEY_FILE is required.
VOLUME ["/srv/smtpconf/var"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["smtpconf"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
