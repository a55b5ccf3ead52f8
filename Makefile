# The README's commands. `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATASET ?= datasets/demo
NAME ?=
PRESET ?= demo
OUTPUTS ?= outputs
DATABASE_ROOT ?= DataBase
NOTEBOOK ?= 1

IMAGES ?=
QUERIES ?=
MAP ?= $(NAME)

.PHONY: demo pipeline map localize map-args localize-args test install clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The whole chain on the embedded synthetic scenes (generated on first run).
demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) run_pipeline.py --generate --dataset datasets/demo --preset demo --notebook

# The same chain on any dataset in the documented layout (NAME: the dataset folder's name unless
# given; OUTPUTS and DATABASE_ROOT: where the run's files go; NOTEBOOK= skips the executed notebook).
# Paths may hold spaces.
pipeline: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) run_pipeline.py --dataset "$(DATASET)" $(if $(NAME),--name "$(NAME)") \
		--preset "$(PRESET)" --outputs "$(OUTPUTS)" --database-root "$(DATABASE_ROOT)" $(if $(NOTEBOOK),--notebook)

# Your own photos: a map from a folder of photos (no poses, no intrinsics; some held out to check it),
# then new photos localized against it without retraining. NAME / MAP: the map's name.
map: map-args $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) run_pipeline.py --photos "$(IMAGES)" --dataset "datasets/$(NAME)" --preset "$(PRESET)" \
		--outputs "$(OUTPUTS)" --database-root "$(DATABASE_ROOT)" $(if $(NOTEBOOK),--notebook)

localize: localize-args $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) run_pipeline.py --queries "$(QUERIES)" --dataset "datasets/$(MAP)" --preset "$(PRESET)" \
		--outputs "$(OUTPUTS)" --database-root "$(DATABASE_ROOT)"

# checked before the install: a mistyped command says so at once
map-args:
	@test -n "$(IMAGES)" -a -n "$(NAME)" || { echo "usage: make map IMAGES=path/to/photos NAME=mymap"; exit 2; }

localize-args:
	@test -n "$(QUERIES)" -a -n "$(MAP)" || { echo "usage: make localize MAP=mymap QUERIES=path/to/new/photos"; exit 2; }

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean-demo:
	rm -rf datasets/demo outputs/demo DataBase/demo
