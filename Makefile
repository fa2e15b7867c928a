# migratio: `make demo` runs a real migration on the local lab, `make test` runs the suite.
# Both work as root on a fresh Debian 12 machine: they install what is missing and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
LAB ?= .lab
DEB_PACKAGES := redis-server openssh-server openssh-client qemu-utils rsync zstd ruby-sidekiq \
                ruby-redis-namespace systemd procps iproute2 python3-venv logrotate e2fsprogs tmux chromium prometheus
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: test demo demo-stop bench deps venv lab-venv install-systemd clean

test: deps venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: deps venv
	$(VENV)/bin/python -m support.demo --root $(LAB)

demo-stop:
	$(VENV)/bin/python -m support.lab stop --root $(LAB)

bench: deps venv
	$(VENV)/bin/python -m bench.run --root $(LAB)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

install-systemd: venv
	support/systemd/install.sh

clean:
	-$(VENV)/bin/python -m support.lab stop --root $(LAB)
	rm -rf $(VENV) $(LAB)
