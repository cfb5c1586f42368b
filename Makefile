# minidock — everything a developer or CI runs, as root on Debian 12 / Ubuntu 22.04+.
#
#   make install   apt packages, a virtualenv with minidock, /usr/local/bin/minidock, sample images
#   make demo      run the sample web server in a container and fetch its page
#   make test      the whole test suite: host (cgroup v1 or v2, whatever this host has),
#                  then the cgroup v2 stage inside a qemu VM
#   make bench     start-up latency and monitor memory, against unshare and runc

PYTHON ?= python3
VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
SAMPLES := $(CURDIR)/rootfs-samples/out
APT_PACKAGES := busybox-static iptables iproute2 runc skopeo umoci docker-registry apache2-utils \
	openssl hyperfine curl socat \
	qemu-system-x86 linux-image-amd64

.PHONY: install deps venv images demo test test-host test-v2 lint bench

install: deps venv images

deps:
	apt-get update -q
	INITRD=No DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
		--no-install-recommends $(APT_PACKAGES) $(if $(shell $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null && echo ok),,python3-venv)

venv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# compat: a plain path entry in a .pth file; the default editable finder is an import
	# hook whose own imports (pathlib, importlib.util…) cost every command ~15 ms.
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	# Start-up reads bytecode even where it may not write it (PYTHONDONTWRITEBYTECODE).
	$(PY) -m compileall -q minidock cgroups $(VENV)/lib
	ln -sf $(VENV)/bin/minidock /usr/local/bin/minidock

images:
	rootfs-samples/busybox/build.sh $(SAMPLES)/busybox
	$(VENV)/bin/minidock import --change 'CMD ["sh"]' $(SAMPLES)/busybox busybox:latest
	$(VENV)/bin/minidock build -t web:latest rootfs-samples/web

demo:
	-$(VENV)/bin/minidock rm -f demo-web >/dev/null 2>&1
	$(VENV)/bin/minidock run -d --name demo-web -p 8080:80 -m 64m --cpus 0.5 web:latest
	curl -fsS --retry 10 --retry-connrefused --retry-delay 1 http://127.0.0.1:8080/
	$(VENV)/bin/minidock ps
	$(VENV)/bin/minidock rm -f demo-web

test: test-host test-v2

test-host:
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration

# The cgroup v2 stage: the same cgroup, limit and device tests, on a pure-v2 kernel in qemu;
# and user namespaces on Debian's own (older) kernel.
test-v2:
	tests/vm/run-in-vm.sh $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_cgroup_limits.py \
		tests/integration/test_cgroups.py tests/integration/test_limits.py \
		tests/integration/test_device_cgroup.py tests/integration/test_userns.py

lint:
	$(VENV)/bin/ruff check minidock cgroups tests bench

bench:
	$(PY) bench/startup.py
