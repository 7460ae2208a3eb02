# The aistack-tts gateway. Configure it with AISTACK_TTS_* environment variables (see README.rst).
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.rst NEWS.rst ./
COPY src ./src
COPY twisted ./twisted
# The gateway alone: the demo upstream's extra (autobahn, soundfile, numpy) is left out.
RUN pip install --no-cache-dir . && rm -rf /src

ENV AISTACK_TTS_LISTEN=tcp:8000:interface=0.0.0.0
EXPOSE 8000
USER nobody
# twist logs JSON lines when stdout is not a terminal; SIGTERM stops it cleanly.
CMD ["twist", "aistack-tts"]
