# mpai: `make run` serves the demo on the embedded default; `make test` is the whole gate.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Run-time files of the demo (git-ignored); config/settings.py reads the same variable.
MPAI_DATA_DIR ?= .data
SECRET_KEY_FILE := $(MPAI_DATA_DIR)/secret_key

.PHONY: install run test lint services worker beat clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev,demo]'
	touch $(STAMP)

install: $(STAMP)

# With DEBUG off (unless DJANGO_DEBUG=1) the demo refuses its development secret key:
# make a real one, once, for run, lint (manage.py), worker and beat.
$(SECRET_KEY_FILE):
	mkdir -p $(MPAI_DATA_DIR)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@.tmp && mv $@.tmp $@

run: install $(SECRET_KEY_FILE)
	$(BIN)/python manage.py migrate --noinput
	@if ! $(BIN)/python manage.py shell -c "from django.contrib.auth import get_user_model as m; raise SystemExit(0 if m().objects.exists() else 1)"; then \
		pw=$$($(BIN)/python -c "import secrets; print(secrets.token_urlsafe(12))"); \
		DJANGO_SUPERUSER_PASSWORD=$$pw $(BIN)/python manage.py createsuperuser --noinput --username demo --email demo@example.com && \
		echo "Created the demo user: username 'demo', password '$$pw' (sign in at http://$(HOST):$(PORT)/)"; \
	fi
	$(BIN)/uvicorn config.asgi:application --host $(HOST) --port $(PORT)

services:
	.ci/services

lint: install $(SECRET_KEY_FILE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mpai
	$(BIN)/python manage.py makemigrations --check --dry-run

test: install services lint
	.ci/browser
	$(BIN)/pytest

worker: install $(SECRET_KEY_FILE)
	$(BIN)/celery -A config worker -l info

beat: install $(SECRET_KEY_FILE)
	$(BIN)/celery -A config beat -l info

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
