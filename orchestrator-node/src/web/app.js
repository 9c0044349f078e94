// conclave's web page: the sessions of one `conclave server --http`, each watched live.
// No third-party code, no build step. Every text from the server goes into the DOM as text
// (textContent), except Markdown, which `markdown()` below renders from escaped text.
//
// The bearer token: `#token=...` in the address (a fragment never reaches the server or its
// logs) is moved into sessionStorage and removed from the address bar; otherwise the page asks
// for it when the server answers 401. It is sent in the Authorization header only: the event
// feed is read with fetch() streaming rather than EventSource (which cannot set headers), so
// the token never appears in a URL.
"use strict";

const TOKEN_KEY = "conclave-token";
const $ = (id) => document.getElementById(id);

function takeTokenFromFragment() {
  // The fragment is `#token=T` or `#/s/ID&token=T`: pieces separated by `&`.
  const pieces = location.hash.replace(/^#/, "").split("&");
  const token = pieces.find((p) => p.startsWith("token="));
  if (token === undefined) return false;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(token.slice(6)));
  const rest = pieces.filter((p) => !p.startsWith("token=")).join("&");
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  return true;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

class Unauthorized extends Error {}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    askForToken((await response.json().catch(() => ({}))).error || "this server needs a token");
    throw new Unauthorized();
  }
  return response;
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message;
}

// ---- Markdown: a small subset, from escaped text -------------------------------------------
function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function inline(escaped) {
  const codes = [];
  let s = escaped.replace(/`([^`]+)`/g, (_, code) => { codes.push(code); return "\u0000" + (codes.length - 1) + "\u0000"; });
  s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
       .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
       .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>');
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => "<code>" + codes[Number(i)] + "</code>");
}

function markdown(source) {
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  let paragraph = [];
  const flush = () => { if (paragraph.length) { out.push("<p>" + inline(escapeHtml(paragraph.join(" "))) + "</p>"); paragraph = []; } };
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      flush();
      const code = [];
      i++;
      while (i < lines.length && !/^```/.test(lines[i])) code.push(lines[i++]);
      i++;
      out.push("<pre><code>" + escapeHtml(code.join("\n")) + "</code></pre>");
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) { flush(); const n = heading[1].length; out.push("<h" + n + ">" + inline(escapeHtml(heading[2])) + "</h" + n + ">"); i++; continue; }
    if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      flush();
      const ordered = /^\s*\d/.test(line);
      const items = [];
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) items.push(lines[i++].replace(/^\s*([-*+]|\d+[.)])\s+/, ""));
      const tag = ordered ? "ol" : "ul";
      out.push("<" + tag + ">" + items.map((t) => "<li>" + inline(escapeHtml(t)) + "</li>").join("") + "</" + tag + ">");
      continue;
    }
    if (/^>\s?/.test(line)) {
      flush();
      const quote = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quote.push(lines[i++].replace(/^>\s?/, ""));
      out.push("<blockquote>" + markdown(quote.join("\n")) + "</blockquote>");
      continue;
    }
    if (line.trim() === "") { flush(); i++; continue; }
    paragraph.push(line.trim());
    i++;
  }
  flush();
  return out.join("\n");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- The session list -----------------------------------------------------------------------
// Newest first, this server's sessions and those found in its session directory, a page at a
// time: "Older sessions" asks for a longer page.
const PAGE = 50;
let listLimit = PAGE;
let selected = null;
let watching = null; // AbortController of the open event feed

async function refreshSessions() {
  try {
    const response = await api("/sessions?limit=" + listLimit);
    const body = await response.json();
    $("server-status").textContent = "";
    $("more-sessions").hidden = body.next_offset == null || listLimit >= 500;
    const list = $("sessions");
    list.replaceChildren();
    for (const s of body.sessions || []) {
      const item = el("li");
      item.dataset.session = s.session;
      if (s.session === selected) item.className = "selected";
      item.append(el("span", "state", s.state), el("strong", "", s.session), el("div", "muted", s.question || ""));
      item.addEventListener("click", () => { location.hash = "#/s/" + encodeURIComponent(s.session); });
      list.append(item);
    }
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("server-status").textContent = "the server does not answer";
  }
}

async function submitQuestion(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("submit-error").textContent = "";
  try {
    const response = await api("/sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question }) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("submit-error").textContent = body.error || "the server refused the question"; return; }
    $("question").value = "";
    location.hash = "#/s/" + encodeURIComponent(body.session);
    refreshSessions();
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("submit-error").textContent = "the server does not answer";
  }
}

// ---- One session: agent columns fed by its event stream ------------------------------------
class SessionView {
  constructor(id) {
    this.id = id;
    this.agents = new Map();
    this.votes = [];
    $("placeholder").hidden = true;
    $("session").hidden = false;
    $("session-title").textContent = "Session " + id;
    $("session-question").textContent = "";
    $("session-state").textContent = "connecting…";
    $("columns").replaceChildren();
    $("votes").replaceChildren();
    $("final").hidden = true;
    $("final-answer").replaceChildren();
    $("history").hidden = true;
    $("history-turns").replaceChildren();
    $("follow-up-form").hidden = true;
    $("follow-up-error").textContent = "";
  }

  // The earlier turns of this session's conversation (the history its agents got).
  history(turns) {
    const list = $("history-turns");
    list.replaceChildren();
    for (const [question, answer] of turns || []) {
      const item = el("li");
      item.append(el("div", "earlier-question", question));
      const body = el("div", "markdown");
      body.innerHTML = markdown(answer);
      item.append(body);
      list.append(item);
    }
    $("history").hidden = list.children.length === 0;
  }

  ended(result) {
    // A session that ran can be continued (one that could not run has only an error).
    $("follow-up-form").hidden = Boolean(result.error);
    const usage = result.usage || {};
    const tokens = (usage.input_tokens || 0) + (usage.output_tokens || 0);
    $("session-state").textContent = "ended: " + (result.reason || result.error || "unknown") +
      " · exit code " + result.exit_code + (tokens ? " · " + tokens + " tokens" : "") +
      (result.cost_usd != null ? " · $" + Number(result.cost_usd).toFixed(4) : "");
  }

  column(agent) {
    let column = this.agents.get(agent);
    if (column) return column;
    const root = el("div", "agent-column");
    root.dataset.agent = agent;
    const title = el("h3", "", agent + " ");
    const model = el("span", "model");
    title.append(model);
    const status = el("div", "agent-status", "waiting");
    const stream = el("div", "stream");
    const notes = el("div", "notes");
    const answers = el("div", "answers");
    root.append(title, status, stream, notes, answers);
    $("columns").append(root);
    column = { root, model, status, stream, notes, answers, current: null };
    this.agents.set(agent, column);
    return column;
  }

  note(agent, className, text) {
    this.column(agent).notes.append(el("div", "note " + className, text));
  }

  handle(event) {
    switch (event.type) {
      case "session_started":
        $("session-question").textContent = event.question;
        this.history(event.history);
        for (const a of event.agents || []) this.column(a.id).model.textContent = a.model + (a.node ? " @ " + a.node : "");
        break;
      case "turn_started": {
        const c = this.column(event.agent);
        c.status.textContent = "turn " + event.turn + " · " + event.mode + " (revision " + event.revision + ")";
        c.stream.append(el("span", "turn-header", "— turn " + event.turn + " —"));
        c.current = el("span");
        c.stream.append(c.current);
        break;
      }
      case "chunk": {
        const c = this.column(event.agent);
        if (!c.current) { c.current = el("span"); c.stream.append(c.current); }
        if (event.kind === "content" || event.kind === "refusal") c.current.append(document.createTextNode(event.data));
        else if (event.kind === "reasoning") c.current.append(el("span", "reasoning", event.data));
        else if (event.kind === "tool_call" && event.data) c.current.append(el("span", "reasoning", "\n[" + event.data.name + "]\n"));
        c.stream.scrollTop = c.stream.scrollHeight;
        break;
      }
      case "answer_accepted": {
        const c = this.column(event.agent);
        const box = el("div", "answer");
        box.append(el("div", "label", event.label + (event.stale ? " (stale)" : "")));
        const body = el("div", "markdown");
        body.innerHTML = markdown(event.content);
        box.append(body);
        c.answers.append(box);
        c.status.textContent = "answered " + event.label;
        break;
      }
      case "vote_accepted": {
        const item = el("li", "vote");
        item.dataset.agent = event.agent;
        item.dataset.label = event.label;
        item.dataset.revision = event.revision;
        item.append(el("strong", "", event.agent), document.createTextNode(" votes for " + event.label + (event.reason ? ": " + event.reason : "")));
        $("votes").append(item);
        this.votes.push(item);
        this.column(event.agent).status.textContent = "voted for " + event.label;
        break;
      }
      case "vote_discarded":
      case "vote_rejected": {
        const match = this.votes.filter((v) => v.dataset.agent === event.agent && !v.classList.contains("invalidated"));
        if (match.length) {
          const vote = match[match.length - 1];
          vote.classList.add("invalidated");
          vote.append(el("span", "why", " — invalidated: " + event.why));
        } else {
          this.note(event.agent, "restart", "vote for " + event.label + " not counted: " + event.why);
        }
        break;
      }
      case "abstained": this.note(event.agent, "restart", "abstained: " + event.reason); break;
      case "turn_restarted": this.note(event.agent, "restart", "restarted: " + event.reason); break;
      case "turn_cancelled": this.note(event.agent, "restart", "turn " + event.turn + " cancelled"); break;
      case "turn_failed": this.note(event.agent, "failure", "turn " + event.turn + " failed (" + event.kind + "): " + event.message); break;
      case "agent_failed": this.note(event.agent, "failure", "failed: " + event.reason); this.column(event.agent).status.textContent = "failed"; break;
      case "agent_lost": this.note(event.agent, "failure", "lost: " + event.reason); break;
      case "agent_rejoined": this.note(event.agent, "restart", "rejoined"); break;
      case "tool_server_started": {
        const where = event.node ? " on node " + event.node : "";
        if (event.error) this.note(event.agent, "failure", (event.optional ? "optional " : "") + "MCP server " + event.server + " (" + event.transport + ")" + where + " did not start after " + event.duration_ms + " ms: " + event.error);
        else this.note(event.agent, "restart", "MCP server " + event.server + " (" + event.transport + ")" + where + " started in " + event.duration_ms + " ms with " + event.tools + " tool(s)");
        break;
      }
      case "answer_rejected": this.note(event.agent, "failure", "answer rejected: " + event.reason); break;
      case "presentation_failed": this.note(event.agent, "failure", "presentation failed: " + event.reason); break;
      case "consensus_reached": $("session-state").textContent = "consensus: " + event.label + " by " + event.winner + " (" + event.votes + " votes)"; break;
      case "timed_out": $("session-state").textContent = "timed out"; break;
      case "interrupted": $("session-state").textContent = "interrupted"; break;
      case "session_paused": $("session-state").textContent = "paused: resume it to continue"; break;
      case "all_agents_failed": $("session-state").textContent = "every agent failed"; break;
      case "budget_exhausted": $("session-state").textContent = "budget reached: " + event.reason; break;
      case "session_ended": $("session-state").textContent = "ended: " + event.reason + " · " + (event.input_tokens + event.output_tokens) + " tokens" + (event.cost_usd != null ? " · $" + event.cost_usd.toFixed(4) : ""); break;
      case "final": {
        $("final").hidden = false;
        $("final-winner").textContent = event.winner ? "— " + event.label + " by " + event.winner : "— " + (event.reason || "no winner");
        $("final-answer").innerHTML = markdown(event.content || "");
        break;
      }
      default: break;
    }
  }
}

// Reads a text/event-stream body with fetch() so the Authorization header can be sent.
async function watch(id) {
  if (watching) watching.abort();
  const controller = new AbortController();
  watching = controller;
  const view = new SessionView(id);
  try {
    const status = await api("/sessions/" + encodeURIComponent(id), { signal: controller.signal });
    const info = await status.json();
    if (!status.ok) { $("session-state").textContent = info.error || "no such session"; return; }
    $("session-question").textContent = info.question || "";
    $("session-state").textContent = info.state;
    view.history(info.history);
    if (info.result) view.ended(info.result);
    const response = await api("/sessions/" + encodeURIComponent(id) + "/events", { signal: controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      // An ended session this server did not run: show what its status holds.
      if (info.result) view.handle(Object.assign({ type: "final", content: info.result.final_answer }, info.result));
      else $("session-state").textContent = body.error || "the event feed is unavailable";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        let name = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        if (name === "lagged") { view.note("feed", "failure", "the page fell behind; some stream pieces were skipped"); continue; }
        try { view.handle(JSON.parse(data.join("\n"))); } catch (e) { /* a malformed line is skipped */ }
      }
    }
    // The feed ended with the session: its status holds the result.
    const ended = await api("/sessions/" + encodeURIComponent(id), { signal: controller.signal });
    const result = (await ended.json()).result;
    if (result) view.ended(result);
    refreshSessions();
  } catch (e) {
    if (e.name !== "AbortError" && !(e instanceof Unauthorized)) $("session-state").textContent = "the event feed broke off; reload to replay it";
  }
}

// A follow-up question: the next turn of the viewed session's conversation.
async function askFollowUp(event) {
  event.preventDefault();
  const question = $("follow-up").value.trim();
  if (!question || !selected) return;
  $("follow-up-error").textContent = "";
  try {
    const response = await api("/sessions/" + encodeURIComponent(selected) + "/continue", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question }) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("follow-up-error").textContent = body.error || "the server refused the follow-up"; return; }
    $("follow-up").value = "";
    location.hash = "#/s/" + encodeURIComponent(body.session);
    refreshSessions();
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("follow-up-error").textContent = "the server does not answer";
  }
}

function route() {
  // A token pasted into the address of an open page arrives as a fragment change.
  if (takeTokenFromFragment()) {
    $("token-form").hidden = true;
    selected = null;
    refreshSessions();
  }
  const match = /^#\/s\/(.+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (id === selected) return;
  selected = id;
  for (const li of $("sessions").children) li.className = li.dataset.session === id ? "selected" : "";
  if (id) watch(id);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    const current = selected;
    selected = null;
    refreshSessions();
    if (current) { location.hash = "#/s/" + encodeURIComponent(current); route(); }
  });
  $("submit-form").addEventListener("submit", submitQuestion);
  $("follow-up-form").addEventListener("submit", askFollowUp);
  $("more-sessions").addEventListener("click", () => { listLimit = Math.min(listLimit + PAGE, 500); refreshSessions(); });
  window.addEventListener("hashchange", route);
  refreshSessions();
  route();
  setInterval(refreshSessions, 2000);
});
