# daxfs — `make test` is the one command CI runs (.ci/run); it installs what it needs itself.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PMDK (libpmem-dev libpmemobj-dev pmdk-tools): the tests of `daxfs run` with a real pmem client;
# acl (setfacl, getfacl): tests/daemon/test_mount_acl.py
APT_PKGS := fuse3 libfuse3-dev pkg-config libpmem-dev libpmemobj-dev pmdk-tools acl

.PHONY: test deps venv helper demo crash bench clean xfstests

APT_WAIT := 600  # seconds to wait for another apt-get (unattended-upgrades on a fresh machine)

deps:  ## system packages pyfuse3 compiles against and fusermount3 (needs root on a fresh Debian machine)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=$(APT_WAIT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=$(APT_WAIT) install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | deps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot]'
	touch $(STAMP)

venv: deps $(STAMP) helper

helper: $(STAMP)  ## `mount -t fuse.daxfs` and fstab find /sbin/mount.fuse.daxfs (root only; skipped otherwise)
	@want="$$(realpath $(VENV))/bin/mount.fuse.daxfs"; have="$$(readlink /sbin/mount.fuse.daxfs 2>/dev/null)"; \
	if [ "$$(id -u)" != 0 ]; then echo "not root: /sbin/mount.fuse.daxfs not installed (mount -t fuse.daxfs needs it)"; \
	elif [ -e /sbin/mount.fuse.daxfs ] && [ ! -L /sbin/mount.fuse.daxfs ]; then \
	  echo "/sbin/mount.fuse.daxfs is not ours (not a symlink): left as it is"; \
	elif [ "$$have" != "$$want" ]; then ln -sf "$$want" /sbin/mount.fuse.daxfs; \
	  echo "/sbin/mount.fuse.daxfs -> $$want$${have:+ (was $$have)}"; fi

test: venv  ## unit tests, integration tests on real mounts, a short crash campaign
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

demo: venv  ## the README's main job: what each mode keeps after a crash, and what each write costs; then the seed's fault latencies
	$(VENV)/bin/daxfs demo
	$(VENV)/bin/daxfs demo faults

crash: venv  ## the long crash campaigns (docs/crash-testing.md); JSON reports in crash-reports/
	mkdir -p crash-reports
	$(VENV)/bin/daxfs crashtest --mode sync --points 500 --seed 1 --json crash-reports/sync.json
	$(VENV)/bin/daxfs crashtest --mode normal --points 120 --seed 1 --json crash-reports/normal.json
	$(VENV)/bin/daxfs crashtest --mode sync --workload ace --seed 1 --json crash-reports/ace-sync.json
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) tools/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

xfstests:  ## xfstests' generic/quick against this checkout's daxfs (~25-40 min; not part of `make test`): docs/xfstests.md
	@if [ -z "$(XFSTESTS)" ]; then echo "make xfstests: set XFSTESTS=/path/to/a/built/xfstests/checkout (docs/xfstests.md)" >&2; exit 2; fi
	@$(MAKE) --no-print-directory $(STAMP)
	tools/xfstests/run.sh --xfstests "$(XFSTESTS)" --venv "$(VENV)" $(XFSTESTS_ARGS) $(TESTS)

fuzz: venv  ## hostile images (issue 9): 5,000 corrupted images through fsck/inspect, 500 through mount+walk+write
	mkdir -p crash-reports
	$(PY) tools/fuzz_images.py --seed 1 --cases 5000 --mounts 500 --json crash-reports/fuzz.json
