# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
# Django 6 needs Python 3.12+: the first of these that runs and is new enough (pyenv shims exist
# for versions that are not active, so each candidate is tried, not just looked up).
PY312 := $(shell for p in $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3 $(PYENV_ROOT)/versions/3.13*/bin/python3) \
           python3.12 python3.13 python3; do \
           "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
PY311 := $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test venvs system-packages lint bench bench-fleet clean

$(VENV)/.stamp: pyproject.toml
	@test -n "$(PY312)" || { echo "Python 3.12 or newer is needed (Django 6); install it or pyenv 3.12" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PY312) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[db,postgres,test]'
	touch $@

# mysqlclient (the MariaDB leg of the tests) builds against Debian packages: the demo does without.
$(VENV)/.mysql-stamp: $(VENV)/.stamp | system-packages
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[mysql]'
	touch $@

# Setup (b): Django 5.2 + django-tasks 0.12 + django-tasks-db.
.venv-compat-b/.stamp: pyproject.toml
	test -x .venv-compat-b/bin/python || $(PY311) -m venv .venv-compat-b
	.venv-compat-b/bin/pip install $(PIP_QUIET) 'django>=5.2,<6' 'django-tasks==0.12.*' django-tasks-db 'psycopg[binary]' -e .
	touch $@

# Setup (c): django-tasks 0.11 with its own django_tasks.backends.database (the guide's settings).
.venv-compat-c/.stamp: pyproject.toml
	test -x .venv-compat-c/bin/python || $(PY311) -m venv .venv-compat-c
	.venv-compat-c/bin/pip install $(PIP_QUIET) 'django>=5.2,<6' 'django-tasks==0.11.*' 'psycopg[binary]' -e .
	touch $@

venvs: $(VENV)/.stamp $(VENV)/.mysql-stamp .venv-compat-b/.stamp .venv-compat-c/.stamp

# Debian packages the suite needs (mysqlclient's build, libfaketime), installed when missing.
system-packages:
	bash tests/system-packages.sh

demo: $(VENV)/.stamp
	$(VENV)/bin/python example/manage.py migrate -v0
	$(VENV)/bin/python example/manage.py seed_demo
	exec $(VENV)/bin/task-supervisor run -c config.toml

# Two pytest-xdist workers; the CPU-heavy chaos runs (xdist_group "cpu") share one worker, so two
# of them never load the two cores at once. The chaos figures are gathered at the end.
test: venvs
	@$(VENV)/bin/python -c "import psycopg; psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', connect_timeout=5).close()" \
	  || { echo "PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth): the suite runs on SQLite AND PostgreSQL." >&2; exit 1; }
	@$(VENV)/bin/python -c "from tests.support import ensure_mariadb_user; ensure_mariadb_user()" \
	  || { echo "MariaDB must answer on 127.0.0.1:3306 (root through its unix socket or on 127.0.0.1): the suite has a MariaDB leg." >&2; exit 1; }
	$(VENV)/bin/ruff check supervisor scheduler tests example
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check supervisor scheduler tests

# Celery (and its Redis client) for the benchmark's Celery side: the benchmark alone needs them.
$(VENV)/.bench-stamp: $(VENV)/.stamp
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-stamp
	$(VENV)/bin/python bench/run.py

# 20 supervisors x 8 children on a PostgreSQL cluster of its own, through PgBouncer and direct.
bench-fleet: $(VENV)/.stamp system-packages
	$(VENV)/bin/python bench/fleet.py

clean:
	rm -rf $(VENV) .venv-compat-b .venv-compat-c build dist *.egg-info example/db.sqlite3
