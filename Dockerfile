# cvmigrate container image: every subcommand (receive, push and the
# controller's commands), run as `docker/podman run IMAGE <subcommand> ...`.
#
#   Build where a registry is reachable:  podman build -t cvmigrate .   (or docker build)
#   Build on a machine without one:       tools/build_image.sh
#     (it makes a Debian bookworm base with debootstrap and passes it as BASE)
#
# BASE is any image with python3 >= 3.11 and its venv module: the official
# python:3.11-slim (python3 in /usr/local) or Debian bookworm with python3 and
# python3-venv (python3 3.11 in /usr).  Both stages use the same BASE, so the
# wheels the builder picks fit the final stage's interpreter exactly.  Nothing
# here calls the system pip: Debian's is "externally managed" (PEP 668) and may
# not even be installed, so all pip work happens inside venvs.
# RUN --mount (secret, bind from a stage) needs BuildKit with docker (the
# default since Docker 23) and works with podman/buildah as they are.
ARG BASE=python:3.11-slim

# --------------------------------------------------------------------------
# builder: the project's wheel and every dependency's wheel, in /wheels.
# --------------------------------------------------------------------------
FROM ${BASE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/build \
 && /opt/build/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

WORKDIR /src

# Dependencies first, from pyproject.toml alone (the base and the controller
# extra): this slow layer is reused for as long as pyproject.toml is unchanged,
# however much the code changes.  --prefer-binary: the base has no compiler,
# and every dependency ships manylinux wheels for CPython 3.11.
# Behind a TLS-intercepting proxy, pass the host's CA bundle as a build secret
# (--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt): pip uses it
# for the build only, and it never lands in a layer.  Without it pip uses its
# own certifi bundle.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle,target=/run/secrets/ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/build/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["controller"]))' > /tmp/requirements.txt \
 && cat /tmp/requirements.txt \
 && /opt/build/bin/pip wheel --prefer-binary --wheel-dir /wheels -r /tmp/requirements.txt

# Then the project itself (what goes into the context is listed in .dockerignore).
COPY . ./
RUN --mount=type=secret,id=ca_bundle,target=/run/secrets/ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && cd /wheels && sha256sum *.whl > /wheels.sha256 && cat /wheels.sha256

# --------------------------------------------------------------------------
# final: the wheels installed into a venv at /opt/cvmigrate, offline, from the
# builder's /wheels (bind-mounted, so no wheel is left in a layer).  No
# compiler, no pip cache, no apt lists; pip and setuptools are removed from
# the venv once it is filled.
# --------------------------------------------------------------------------
FROM ${BASE}

# The wheels' checksums, copied first, are what keys the install layer's
# cache: buildah (podman build) does not count the content of a RUN's bind
# mount, so without this a changed wheel would reuse a stale install layer.
# The file stays as the record of what the image holds.
COPY --from=builder /wheels.sha256 /opt/cvmigrate-wheels.sha256

ENV PATH=/opt/cvmigrate/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/cvmigrate \
 && /opt/cvmigrate/bin/pip install --no-index --find-links /wheels 'cvmigrate[controller]' \
 && /opt/cvmigrate/bin/pip uninstall --yes pip setuptools \
 && cvmigrate --version

# Runs as root, on purpose: the receiver writes the target's block devices,
# partition tables and filesystems (and mounts them), and the agent must read
# every file of the source server whatever its owner and mode; a non-root user
# could do neither.  Give the container only the devices and capabilities the
# subcommand needs (e.g. --device for the target disk) rather than --privileged
# where you can.
USER root
WORKDIR /

ENTRYPOINT ["cvmigrate"]
CMD ["--help"]

ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG BASE
LABEL org.opencontainers.image.title="cvmigrate" \
      org.opencontainers.image.description="Online server migration to Tencent Cloud CVM: resumable, encrypted, verified end to end, without rsync." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE}"
