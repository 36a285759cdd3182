# Sourced by the bench scripts that time requests to a warm daemon: builds Minerva as `make
# build` does, starts minervad with $THREADS threads on a private socket in a temporary home
# (stopped and removed on exit), and pulls the default model. Models come from
# $MINERVA_MODELS (default ~/.minerva/models). Sets BIN and HOME_DIR; exports MINERVA_HOME and
# MINERVA_ADDR for the CLI.
make build >&2
BIN=target/release
HOME_DIR=$(mktemp -d)
trap 'kill "$DAEMON" 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
export MINERVA_HOME="$HOME_DIR"
MODELS=${MINERVA_MODELS:-$HOME/.minerva/models}
$BIN/minervad --socket "$HOME_DIR/d.sock" --models-dir "$MODELS" --threads "$THREADS" 2>"$HOME_DIR/log" &
DAEMON=$!
export MINERVA_ADDR="$HOME_DIR/d.sock"
$BIN/minerva pull smollm2-135m >&2
