#!/usr/bin/env bash
# The docker cluster tests: deploy/docker-compose.yml (an orchestrator, three conclave-agent
# nodes and conclave-sim on an internal network) runs real sessions while containers are killed
# and partitioned. Each scenario is an env file in tests/docker/scenarios/:
#
#   consensus  the cluster as shipped runs a session to consensus
#   kill       `docker kill` of one agent container mid-turn: the session still completes, the
#              journal says that agent was lost, no answer is applied twice
#   partition  `docker network disconnect` of one agent container for 30 s, then reconnect:
#              the heartbeat finds the loss, the node rejoins the running session, the session
#              completes, no answer is applied twice
#   wrong-cookie  a node with the wrong cookie, claiming an agent node's name, is refused (the
#              orchestrator logs it) and never hosts an agent; the real node then runs the session
#   tls        the cluster with mutual TLS (deploy/docker-compose.tls.yml, certificates from
#              deploy/gen-tls.sh) runs a session; openssl is required (skipped without it only outside CI)
#
# Usage: bash tests/docker/run.sh [SCENARIO...]     (default: all, in the order above)
# Skips (exit 0, "SKIP: ...") when `docker info` fails, except under CI=true where that fails;
# any other problem fails loudly.
# Bounded: every wait has a timeout, the scenarios together a budget (CONCLAVE_DOCKER_TEST_BUDGET,
# seconds, default 420; they take about 2.5 minutes), and building the image (a no-op cargo build
# when the release binaries are fresh) its own (CONCLAVE_DOCKER_BUILD_TIMEOUT, default 1200).
# Traffic goes only to the project's own containers. Containers, networks and volumes are
# removed on exit, whatever happens.
#
# Environment: CONCLAVE_SKIP_CARGO=1 uses the release binaries already built (see
# deploy/build-images.sh); CONCLAVE_DOCKER_TEST_KEEP=1 keeps the work directory (journals, logs).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
compose_file="$repo/deploy/docker-compose.yml"
budget="${CONCLAVE_DOCKER_TEST_BUDGET:-420}"
build_timeout="${CONCLAVE_DOCKER_BUILD_TIMEOUT:-1200}"
started=$SECONDS

say() { echo "docker-tests: $*"; }
die() { echo "docker-tests: FAIL: $*" >&2; exit 1; }

# --- Is there a docker to test with? ----------------------------------------------------------
# Outside CI a machine without Docker skips (exit 0, "SKIP: ..."); under CI=true it fails: CI
# must never pass by not running the cluster tests.
no_docker() {
  if [ "${CI:-}" = true ]; then die "$1 (CI=true: the docker cluster tests must run)"; fi
  echo "SKIP: $1; the docker cluster tests did not run"
  exit 0
}
command -v docker >/dev/null 2>&1 || no_docker "docker not available (no docker command)"
timeout 30 docker info >/dev/null 2>&1 || no_docker "docker not available (\`docker info\` failed)"
# From here on docker works, so anything missing is a failure, not a skip.
if timeout 30 docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  die "docker works but neither \`docker compose\` nor \`docker-compose\` is installed"
fi
for tool in timeout grep sed awk sort uniq base64 head mktemp; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done

# --- Time budget ---------------------------------------------------------------------------------
remaining() { echo $((budget - (SECONDS - started))); }
# A step's timeout: what it asks for, capped by what is left of the budget (at least 1 s, so a
# spent budget makes the step time out and the scenario fail rather than wait).
bounded() {
  local want="$1" left
  left="$(remaining)"
  [ "$left" -ge 1 ] || left=1
  if [ "$want" -lt "$left" ]; then echo "$want"; else echo "$left"; fi
}

scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(consensus kill partition wrong-cookie tls)
for scenario in "${scenarios[@]}"; do
  [ -f "$here/scenarios/$scenario.env" ] \
    || die "no scenario \`$scenario\` (known: $(cd "$here/scenarios" && ls -- *.env | sed 's/\.env$//' | tr '\n' ' '))"
done

# --- Work directory and cleanup ------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/conclave-docker-test.XXXXXX")"
run_id="cdt$$"
projects=()
extra_containers=()

compose_files=(-f "$compose_file")   # the scenario may add override files
compose() { # compose SECONDS PROJECT ARGS...: docker compose, killed after SECONDS
  local seconds="$1" project="$2"; shift 2
  timeout "$seconds" "${compose_cmd[@]}" -p "$project" "${compose_files[@]}" "$@"
}

# Long waits run in the background and are waited for with `wait`, which a signal interrupts:
# a plain foreground `sleep 30` or `docker wait` would hold back the cleanup trap until it ends.
waiting_pid=""
interruptible() { # interruptible COMMAND...: runs it, returns its status
  local status=0
  "$@" &
  waiting_pid=$!
  wait "$waiting_pid" || status=$?
  waiting_pid=""
  return "$status"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$waiting_pid" ]; then kill "$waiting_pid" 2>/dev/null || true; fi
  for container in "${extra_containers[@]}"; do
    timeout 60 docker rm -f "$container" >/dev/null 2>&1 || true
  done
  for project in "${projects[@]}"; do
    timeout 120 "${compose_cmd[@]}" -p "$project" -f "$compose_file" down -v --remove-orphans -t 5 \
      >/dev/null 2>&1 || echo "docker-tests: warning: could not remove compose project $project" >&2
  done
  if [ "${CONCLAVE_DOCKER_TEST_KEEP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
    echo "docker-tests: journals and logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The image -------------------------------------------------------------------------------------
image="conclave:local"
say "building $image (deploy/build-images.sh)"
build_started=$SECONDS
CONCLAVE_IMAGE="$image" interruptible timeout "$build_timeout" "$repo/deploy/build-images.sh" \
  || die "deploy/build-images.sh failed (or took over ${build_timeout}s)"
say "image ready in $((SECONDS - build_started))s"
# The scenarios' budget starts now: a cold cargo build is bounded on its own.
started=$SECONDS

# The cluster secret, readable only by this user; the containers run as this user too, so they
# can read it and the journals they write in the bind-mounted data directories are ours.
( umask 077; head -c 32 /dev/urandom | base64 >"$work/cookie" )
export CONCLAVE_IMAGE="$image"
export CONCLAVE_COOKIE_FILE="$work/cookie"
CONCLAVE_UID="$(id -u)"
CONCLAVE_GID="$(id -g)"
export CONCLAVE_UID CONCLAVE_GID
export CONCLAVE_DISPLAY=quiet
export RUST_LOG="${RUST_LOG:-info}"

# --- Journal helpers -------------------------------------------------------------------------------
journal_of() { # journal_of DATA_DIR: the one session journal there (empty until it exists)
  local j
  for j in "$1"/sessions/*/events.jsonl; do
    [ -f "$j" ] && { echo "$j"; return 0; }
  done
  return 0
}

wait_for_journal_line() { # wait_for_journal_line DATA_DIR ERE SECONDS
  local data="$1" pattern="$2" limit deadline journal
  limit="$(bounded "$3")"
  deadline=$((SECONDS + limit))
  while [ $SECONDS -lt $deadline ]; do
    journal="$(journal_of "$data")"
    if [ -n "$journal" ] && grep -qE "$pattern" "$journal"; then return 0; fi
    sleep 0.2
  done
  return 1
}

# Checks shared by every scenario: the session reached consensus, every agent was placed on its
# node, and nothing was applied twice.
check_journal() { # check_journal JOURNAL -> prints problems, returns 1 if any
  local journal="$1" problems=0 dups
  if ! grep -q '"type":"session_ended","reason":"consensus","exit_code":0' "$journal"; then
    echo "the session did not end in consensus: $(grep '"type":"session_ended"' "$journal" | cut -c1-200 || echo 'no session_ended line')"
    problems=1
  fi
  grep -q '"type":"final_answer"' "$journal" || { echo "no final_answer in the journal"; problems=1; }
  for node in agent-1 agent-2 agent-3; do
    grep -q "\"type\":\"session_started\".*\"node\":\"$node\"" "$journal" \
      || { echo "session_started places no agent on node $node"; problems=1; }
  done
  # Answer labels are assigned once each.
  dups="$(grep -o '"type":"answer_accepted","agent":"[^"]*","label":"[^"]*"' "$journal" \
    | sed 's/.*"label":"\([^"]*\)"/\1/' | sort | uniq -d)"
  [ -z "$dups" ] || { echo "answer label(s) accepted twice: $dups"; problems=1; }
  # A resent NewAnswer would get a fresh label: the same agent's same content twice is a duplicate.
  dups="$(grep '"type":"answer_accepted"' "$journal" \
    | sed -E 's/.*"agent":"([^"]*)".*"content":(.*)$/\1 \2/' | sort | uniq -d | cut -c1-120)"
  [ -z "$dups" ] || { echo "the same answer was accepted twice: $dups"; problems=1; }
  # Each turn decides once: a decision applied twice shows as two decision_received for one turn.
  dups="$(grep -o '"type":"decision_received","agent":"[^"]*","turn":[0-9]*' "$journal" \
    | sed 's/"type":"decision_received",//' | sort | uniq -d)"
  [ -z "$dups" ] || { echo "a turn's decision was received twice: $dups"; problems=1; }
  return "$problems"
}

summarize_journal() { # one line per interesting event, for the log
  grep -oE '"type":"(answer_accepted|vote_accepted|agent_lost|agent_failed|agent_rejoined|turn_failed|consensus_reached|session_ended)"[^}]{0,120}' "$1" \
    | sed 's/^/    /' | cut -c1-200 || true
}

# --- One scenario ----------------------------------------------------------------------------------
failures=()

run_scenario() { # run_scenario NAME: returns 0 on pass
  local name="$1" env_file="$here/scenarios/$1.env"
  [ -f "$env_file" ] || die "no scenario $name ($env_file)"
  [ "$(remaining)" -gt 0 ] || { say "[$name] FAIL: the time budget of ${budget}s is spent"; return 1; }
  # Scenario parameters (a trusted file of this repository), with defaults.
  local CONCLAVE_CLUSTER_CONFIG="" CONCLAVE_QUESTION="" FAULT=none FAULT_SERVICE="" FAULT_AGENT=""
  local FAULT_AFTER_TURN_MS=1000 PARTITION_SECONDS=30 SESSION_TIMEOUT_SECONDS=120 TLS=0
  # shellcheck disable=SC1090
  source "$env_file"
  local project="${run_id}-${name}" data="$work/$name" config
  config="$(cd "$here" && cd "$(dirname "$CONCLAVE_CLUSTER_CONFIG")" && pwd)/$(basename "$CONCLAVE_CLUSTER_CONFIG")"
  [ -f "$config" ] || die "scenario $name: config $config does not exist"
  mkdir -p "$data"
  compose_files=(-f "$compose_file")
  if [ "$TLS" = 1 ]; then
    if ! command -v openssl >/dev/null 2>&1; then
      if [ "${CI:-}" = true ]; then
        say "[$name] FAIL: openssl is not installed (needed to make the certificates; CI=true never skips)"
        return 1
      fi
      say "[$name] SKIP: openssl is not installed (needed to make the certificates)"
      return 0
    fi
    "$repo/deploy/gen-tls.sh" "$data/tls" orchestrator agent-1 agent-2 agent-3 >/dev/null \
      || { say "[$name] FAIL: deploy/gen-tls.sh failed"; return 1; }
    export CONCLAVE_TLS_DIR="$data/tls"
    compose_files+=(-f "$repo/deploy/docker-compose.tls.yml")
  fi
  projects+=("$project")
  export CONCLAVE_CLUSTER_CONFIG="$config" CONCLAVE_DATA="$data" CONCLAVE_QUESTION
  say "[$name] starting the cluster (project $project, config ${config#"$repo"/})"
  local t0=$SECONDS
  local problems=()
  local intruder=""
  if [ "$FAULT" = wrong_cookie ]; then
    # The orchestrator first, alone with an impostor: same node name, wrong cookie.
    compose "$(bounded 120)" "$project" up -d sim orchestrator >"$data/compose-up.log" 2>&1 \
      || { cat "$data/compose-up.log" >&2; say "[$name] FAIL: compose up failed"; return 1; }
    local network
    network="$(timeout 30 docker inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' \
      "$(compose 30 "$project" ps -q orchestrator)" | awk '{print $1}')"
    intruder="${project}-intruder"
    extra_containers+=("$intruder")
    timeout 60 docker run -d --name "$intruder" --network "$network" \
      -e CONCLAVE_COOKIE="wrong-$(head -c 16 /dev/urandom | base64)" -e RUST_LOG=info \
      "$CONCLAVE_IMAGE" conclave-agent --join orchestrator:7420 --name "$FAULT_SERVICE" >/dev/null \
      || { say "[$name] FAIL: could not start the impostor node"; return 1; }
    local deadline=$((SECONDS + $(bounded 30))) refused=0
    while [ $SECONDS -lt $deadline ]; do
      if compose 30 "$project" logs --no-color orchestrator 2>/dev/null | grep -q "refused a node connection"; then
        refused=1; break
      fi
      sleep 0.5
    done
    [ "$refused" = 1 ] || problems+=("the orchestrator never logged refusing the node with the wrong cookie")
    say "[$name] impostor $FAULT_SERVICE with a wrong cookie refused; starting the real nodes"
  fi
  compose "$(bounded 120)" "$project" up -d >"$data/compose-up.log" 2>&1 \
    || { cat "$data/compose-up.log" >&2; say "[$name] FAIL: compose up failed"; return 1; }
  local orchestrator
  orchestrator="$(compose 30 "$project" ps -q orchestrator)"
  [ -n "$orchestrator" ] || { say "[$name] FAIL: no orchestrator container"; return 1; }

  case "$FAULT" in
    none|wrong_cookie) ;;
    kill|partition)
      local victim network
      victim="$(compose 30 "$project" ps -q "$FAULT_SERVICE")"
      [ -n "$victim" ] || { say "[$name] FAIL: no container for $FAULT_SERVICE"; return 1; }
      if ! wait_for_journal_line "$data" "\"type\":\"turn_started\",\"agent\":\"$FAULT_AGENT\"" 90; then
        problems+=("$FAULT_AGENT never started a turn (did $FAULT_SERVICE join?)")
      else
        sleep "$(awk "BEGIN { print $FAULT_AFTER_TURN_MS / 1000 }")"
        if [ "$FAULT" = kill ]; then
          say "[$name] docker kill $FAULT_SERVICE (agent $FAULT_AGENT) mid-turn"
          timeout 30 docker kill "$victim" >/dev/null || problems+=("docker kill $FAULT_SERVICE failed")
        else
          network="$(timeout 30 docker inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$victim" | awk '{print $1}')"
          [ -n "$network" ] || { say "[$name] FAIL: $FAULT_SERVICE is on no network"; return 1; }
          say "[$name] docker network disconnect $network $FAULT_SERVICE for ${PARTITION_SECONDS}s"
          timeout 30 docker network disconnect "$network" "$victim" \
            || problems+=("docker network disconnect failed")
          interruptible sleep "$(bounded "$PARTITION_SECONDS")"
          say "[$name] docker network connect $network $FAULT_SERVICE"
          timeout 30 docker network connect --alias "$FAULT_SERVICE" "$network" "$victim" \
            || problems+=("docker network connect failed")
        fi
      fi
      ;;
    *) die "scenario $name: unknown FAULT=$FAULT" ;;
  esac

  # The orchestrator runs one session and exits with conclave's exit code.
  local exit_code
  if interruptible timeout "$(bounded "$SESSION_TIMEOUT_SECONDS")" docker wait "$orchestrator" \
    >"$data/orchestrator-exit-code"; then
    exit_code="$(cat "$data/orchestrator-exit-code")"
  else
    problems+=("the orchestrator did not finish within ${SESSION_TIMEOUT_SECONDS}s")
    exit_code=timeout
  fi
  compose 60 "$project" logs --no-color >"$data/compose.log" 2>&1 || true
  [ "$exit_code" = 0 ] || problems+=("the orchestrator exited with $exit_code (0 = consensus)")
  if [ "$TLS" = 1 ]; then
    local plain
    plain="$(grep -cE "(cluster listening for agent nodes|agent node started).* tls=false" "$data/compose.log" || true)"
    [ "$(grep -cE "(cluster listening for agent nodes|agent node started).* tls=true" "$data/compose.log" || true)" = 4 ] \
      && [ "$plain" = 0 ] \
      || problems+=("not every node ran with TLS (the logs say tls=false, or say nothing)")
  fi
  if [ -n "$intruder" ]; then
    timeout 30 docker logs "$intruder" >"$data/intruder.log" 2>&1 || true
    timeout 60 docker rm -f "$intruder" >/dev/null 2>&1 || true
    if grep -q "joined the orchestrator" "$data/intruder.log"; then
      problems+=("the node with the wrong cookie joined the orchestrator")
    fi
    if ! grep -qE "^${FAULT_SERVICE}[_-][^ ]* +\| .*agent started .*agent=$FAULT_AGENT" "$data/compose.log"; then
      problems+=("$FAULT_AGENT did not run on the real $FAULT_SERVICE")
    fi
  fi

  local journal
  journal="$(journal_of "$data")"
  if [ -z "$journal" ]; then
    problems+=("no journal under $data/sessions")
  else
    local out
    if ! out="$(check_journal "$journal")"; then
      while IFS= read -r line; do problems+=("$line"); done <<<"$out"
    fi
    if [ "$FAULT" = kill ] \
      && ! grep -qE "\"type\":\"agent_(lost|failed)\",\"agent\":\"$FAULT_AGENT\"" "$journal"; then
      problems+=("the journal does not say that $FAULT_AGENT (killed with $FAULT_SERVICE) was lost")
    fi
    if [ "$FAULT" = partition ]; then
      # 30 s of silence is far past the heartbeat deadline (5 s): the loss must be noticed, and
      # the session (turns of ~25 s) is still running when the node comes back, so it rejoins.
      grep -q "\"type\":\"agent_lost\",\"agent\":\"$FAULT_AGENT\"" "$journal" \
        || problems+=("the journal does not say that $FAULT_AGENT was lost during the partition")
      grep -q "\"type\":\"agent_rejoined\",\"agent\":\"$FAULT_AGENT\"" "$journal" \
        || problems+=("$FAULT_AGENT did not rejoin the running session after the partition")
    fi
    summarize_journal "$journal"
  fi
  compose "$(bounded 120)" "$project" down -v --remove-orphans -t 5 >/dev/null 2>&1 \
    || problems+=("compose down failed")

  if [ "${#problems[@]}" -eq 0 ]; then
    say "[$name] PASS in $((SECONDS - t0))s"
    return 0
  fi
  say "[$name] FAIL after $((SECONDS - t0))s:"
  printf '    - %s\n' "${problems[@]}"
  echo "    --- last lines of the containers' logs ($data/compose.log):"
  tail -n 40 "$data/compose.log" 2>/dev/null | sed 's/^/    /' || true
  return 1
}

for scenario in "${scenarios[@]}"; do
  run_scenario "$scenario" || failures+=("$scenario")
done

if [ "${#failures[@]}" -gt 0 ]; then
  die "scenario(s) failed: ${failures[*]} (in $((SECONDS - started))s)"
fi
say "all ${#scenarios[@]} scenario(s) passed in $((SECONDS - started))s"
