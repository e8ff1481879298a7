# GPU image for single- and multi-node training with DeepSpeed (pdsh, OpenMPI or SLURM).
#
#   docker build -t neox-trainer:0.1.0 .
#   docker compose up          # one node, data/ and checkpoints/ mounted (docker-compose.yml)
#
# Multi-node: run one container per node with host networking; every container runs sshd
# on port 2222 as the non-root user "neox", and all containers of this image share one
# ssh key, so pdsh/mpirun reach the others without a password. Mount your own key at
# /home/neox/.ssh to replace the built-in one on shared clusters.

# torch 2.13.0 with CUDA and nvcc (devel: flash-attn and DeepSpeed ops compile here).
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/opt/neox/requirements/constraints.txt \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0" \
    MAX_JOBS=8

# OpenMPI and pdsh are DeepSpeed's multi-node launchers; sshd lets the other nodes in;
# libaio backs DeepSpeed's async I/O op (ZeRO-Infinity offload to NVMe); libjemalloc2 is
# the workers' malloc (megatron/launch/allocator.py).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openmpi-bin libopenmpi-dev pdsh openssh-server openssh-client \
        libaio-dev libjemalloc2 git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the code, the ssh setup and the runs.
RUN useradd --create-home --uid 1000 --shell /bin/bash neox \
    && mkdir -p /opt/neox /opt/neox/data /opt/neox/checkpoints /run/sshd \
    && chown -R neox:neox /opt/neox

WORKDIR /opt/neox

# Requirements first so code edits do not rebuild the dependency layers.
COPY --chown=neox:neox requirements/ requirements/

# DeepSpeed compiles its CUDA/C++ ops at install time instead of JIT on the first run
# (DS_BUILD_OPS style, limited to the ops training uses). --no-build-isolation builds
# against the image's CUDA torch rather than fetching another torch.
RUN DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 \
    DS_BUILD_AIO=1 \
    pip install --no-build-isolation \
        -r requirements/requirements.txt \
        -r requirements/requirements-dev.txt \
        -r requirements/requirements-tensorboard.txt \
        -r requirements/requirements-wandb.txt \
        -r requirements/requirements-eval.txt \
        -r requirements/requirements-sentencepiece.txt \
        -r requirements/requirements-bnb.txt \
        -r requirements/requirements-hf.txt \
    && pip install --no-build-isolation -r requirements/requirements-flashattention.txt \
    && pip install --no-deps -r requirements/requirements-mup.txt

COPY --chown=neox:neox . .
RUN pip install --no-deps -e .

# Passwordless ssh between containers: sshd runs as neox on port 2222 (no root needed, no
# clash with the host's sshd under host networking); the client defaults to that port.
USER 1000:1000
RUN mkdir -p /home/neox/.ssh \
    && ssh-keygen -q -t ed25519 -N "" -f /home/neox/.ssh/id_ed25519 \
    && ssh-keygen -q -t ed25519 -N "" -f /home/neox/.ssh/ssh_host_ed25519_key \
    && cp /home/neox/.ssh/id_ed25519.pub /home/neox/.ssh/authorized_keys \
    && printf '%s\n' "Port 2222" "HostKey /home/neox/.ssh/ssh_host_ed25519_key" \
        "PidFile /home/neox/.ssh/sshd.pid" "UsePAM no" "PasswordAuthentication no" \
        "PubkeyAuthentication yes" "AuthorizedKeysFile /home/neox/.ssh/authorized_keys" \
        > /home/neox/.ssh/sshd_config \
    && printf '%s\n' "Host *" "    Port 2222" "    StrictHostKeyChecking no" \
        "    UserKnownHostsFile /dev/null" "    LogLevel ERROR" > /home/neox/.ssh/config \
    && chmod 700 /home/neox/.ssh && chmod 600 /home/neox/.ssh/*

ENV PDSH_RCMD_TYPE=ssh
EXPOSE 2222

HEALTHCHECK --interval=5m --timeout=2m --start-period=1m \
    CMD ["/bin/bash", "-c", "python -c 'import megatron, deepspeed' && ds_report || exit 1"]

# Start sshd, then run the given command (an interactive shell by default).
ENTRYPOINT ["/bin/bash", "-c", "/usr/sbin/sshd -f /home/neox/.ssh/sshd_config && exec \"$@\"", "--"]
CMD ["bash"]
