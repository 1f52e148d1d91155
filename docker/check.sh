#!/usr/bin/env bash
# The Docker path, checked the way a new admin takes it, from a fresh clone of this repository:
# copy .env.example to .env unchanged (plus the simulator service's URL), build the image, check
# that it holds one FFmpeg (PyAV's), start the bot and the simulator with Compose, make a clip
# through the simulator service, check /healthz, then `docker stop` the bot and expect a clean
# exit. Prints each step; exits non-zero at the first that fails. Cleans up its containers,
# volumes and clone.
#
#   docker/check.sh                      clone the current commit of this repository
#   BUILD_NETWORK=host docker/check.sh   build with the host's network (hosts without a bridge)
#   PYTHON_IMAGE=python:3.11-slim ...    build on another base than the pinned one
#   CHECK_HTTP_PORT=18080 ...            publish /healthz on another host port
#   KEEP=1 docker/check.sh               leave the clone and the containers for a look
set -euo pipefail

source_repo="$(cd "$(dirname "$0")/.." && git rev-parse --show-toplevel)"
commit="$(git -C "$source_repo" rev-parse HEAD)"
work="$(mktemp -d /tmp/videobot-docker-check.XXXXXX)"
project="videobotcheck$$"
port="${CHECK_HTTP_PORT:-8080}"
export VIDEOBOT_HOST_PORT="$port"
compose=(docker compose -p "$project" -f docker/compose.yaml --profile simulator)

step() { printf '\n== %s\n' "$*"; }
cleanup() {
    if [[ "${KEEP:-}" != 1 && -d "$work/videobot" ]]; then
        (cd "$work/videobot" && "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1) || true
        rm -rf "$work"
    fi
}
trap cleanup EXIT

step "fresh clone of $commit"
git clone --quiet "$source_repo" "$work/videobot"
git -C "$work/videobot" checkout --quiet "$commit"
cd "$work/videobot"

step "cp .env.example .env, and point the bot at the simulator service"
cp .env.example .env
echo "WAN_API_BASE_URL=http://simulator:8900/v1" >> .env
grep -c '=' .env | sed 's/^/settings lines in .env: /'

step "docker build (dependencies layer first)"
start=$(date +%s)
docker build --quiet --network "${BUILD_NETWORK:-default}" ${PYTHON_IMAGE:+--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"} \
    -f docker/Dockerfile -t videobot:latest .
echo "built in $(( $(date +%s) - start )) s"
docker image inspect videobot:latest --format 'user={{.Config.User}} healthcheck={{json .Config.Healthcheck.Test}}'

step "one FFmpeg in the image: the libavcodec in PyAV's wheel, no ffmpeg binary"
docker run --rm --network none --user 0 videobot:latest \
    find / -xdev \( -name 'libavcodec*' -o -name 'ffmpeg*' \) -type f 2>/dev/null | tee "$work/ffmpeg.txt"
copies="$(grep -c '/libavcodec[^/]*$' "$work/ffmpeg.txt" || true)"
binaries="$(grep -c '/ffmpeg[^/]*$' "$work/ffmpeg.txt" || true)"
echo "libavcodec copies: $copies, ffmpeg files: $binaries"
[[ "$copies" == 1 && "$binaries" == 0 ]]

step "docker compose up -d (bot + simulator)"
"${compose[@]}" up -d --no-build 2>&1
bot="$("${compose[@]}" ps -q bot)"

step "the bot's /healthz"
for _ in $(seq 1 60); do
    if body="$(curl -fsS "http://127.0.0.1:$port/healthz" 2>/dev/null)"; then break; fi
    sleep 1
done
echo "$body"
echo "$body" | grep -q '"status": *"ok"'

step "a clip through the simulator service (videobot generate in the bot's container)"
"${compose[@]}" exec -T bot videobot generate "a red fox running through fresh snow" --duration 2 --output /data/fox.mp4
"${compose[@]}" exec -T bot python -c "
from pathlib import Path
from bot.media import probe
info = probe(Path('/data/fox.mp4'))
print(f'clip: {info.duration_s:.1f} s, {info.width}x{info.height}, {info.codec}, {info.size_bytes} bytes')
assert info.codec == 'h264' and info.duration_s > 1.5
"
"${compose[@]}" exec -T bot videobot jobs --limit 1

step "no directory created on the host for a missing limits file"
test ! -e videobot.toml && test ! -e docker/config/videobot.toml && echo "none: built-in limits in force"
"${compose[@]}" logs bot 2>&1 | grep -E "^.*Limits:" | tail -1

step "health status as Docker sees it"
for _ in $(seq 1 40); do
    health="$(docker inspect --format '{{.State.Health.Status}}' "$bot")"
    [[ "$health" == healthy ]] && break
    sleep 1
done
echo "bot: $health"
[[ "$health" == healthy ]]

step "docker stop (SIGTERM) ends the bot cleanly"
start=$(date +%s)
docker stop "$bot" >/dev/null
code="$(docker inspect --format '{{.State.ExitCode}}' "$bot")"
echo "stopped in $(( $(date +%s) - start )) s with exit code $code"
[[ "$code" == 0 ]]
"${compose[@]}" logs --no-log-prefix bot 2>&1 | tail -n 8

step "OK: the Docker path works from a fresh clone"
