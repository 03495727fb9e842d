// localrag web chat: one plain ES module, no dependencies, no build step, nothing loaded from the network
// but the gateway. It speaks the WebSocket protocol of shared/protocol.py: every request carries a
// request_id and every reply is matched back to its request by it, so several can be in flight at once.
//
// Every string that comes from the server is put into the page as text (textContent / text nodes),
// never as HTML.
//
// Identity: the key arrives in the URL's fragment (`/ui/#key=...`, which browsers never send to a
// server); the page moves it to this tab's sessionStorage and takes it out of the address bar. It goes
// to the gateway as the WebSocket subprotocol `localrag.bearer.<key>` (browsers cannot set headers on a
// WebSocket), next to `localrag.v1`, which the gateway answers; on HTTP calls as `Authorization: Bearer`.
// The key is sent only to this page's own gateway, or to a `?ws=` gateway the page's config allows.

const STORAGE_KEY = "localrag.conversation_id";
const KEY_STORAGE = "localrag.key";
const SUBPROTOCOL = "localrag.v1";
const BEARER_PREFIX = "localrag.bearer.";
// A subprotocol is an HTTP token (RFC 9110 tchar); API keys (lrk_...) and JWTs are made of these.
const TOKEN_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 15000;
const DEFAULT_WS_PATH = "/local";

// ------------------------------------------------------------------ small DOM helpers

const $ = (id) => document.getElementById(id);

/** Create an element. props: class, text, attributes; children: nodes or strings (added as text). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function formatBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function describeError(reply) {
  const code = reply && reply.code ? String(reply.code) : "error";
  const message = reply && reply.message ? String(reply.message) : "something went wrong";
  return `${code}: ${message}`;
}

// ------------------------------------------------------------------ the gateway connection

/**
 * A WebSocket to the gateway that reconnects on its own (exponential backoff with jitter) and routes
 * replies to their requests by request_id. Events: "connecting", "open", "closed" ({detail: {delay}}),
 * "unmatched" ({detail: message}).
 */
class Gateway extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.key = null; // the credential, sent as the localrag.bearer.<key> subprotocol
    this.paused = false; // true after the gateway refused the key: retrying cannot help until a new key
    this.ws = null;
    this.pending = new Map(); // request_id -> handler(reply) returning true when the request is done
    this.attempt = 0;
    this.timer = null;
    this.counter = 0;
    this.prefix = Math.random().toString(36).slice(2, 8);
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws !== null || !this.url) return; // open or still connecting, or no URL yet
    this.paused = false;
    this.emit("connecting");
    const protocols = [SUBPROTOCOL];
    if (this.key) protocols.push(BEARER_PREFIX + this.key);
    let ws;
    try {
      ws = new WebSocket(this.url, protocols);
    } catch (err) {
      console.error("bad WebSocket URL", this.url, err.name);
      this.closed();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      this.attempt = 0;
      this.emit("open");
    });
    ws.addEventListener("message", (event) => this.receive(event.data));
    // "error" is always followed by "close"; handle the loss once, there.
    ws.addEventListener("close", async () => {
      if (this.ws !== ws) return;
      this.ws = null;
      // A refused handshake looks like any other failure to a page (no status): ask the gateway over
      // HTTP whether it was the key.
      const key = this.key;
      const status = opened ? 0 : await this.authStatus();
      // A new key arrived (or a new socket opened) while the gateway was asked: this answer is stale.
      if (this.key !== key || this.ws !== null) return;
      if (status === 401 || status === 403) {
        this.refused(status);
        return;
      }
      this.closed();
    });
  }

  /** 401 or 403 when the gateway refuses this page's key (an authenticated HTTP call), else 0. */
  async authStatus() {
    try {
      const url = new URL(this.url);
      url.protocol = url.protocol === "wss:" ? "https:" : "http:";
      url.pathname = "/v1/kb/status";
      url.search = "";
      const headers = this.key ? { Authorization: `Bearer ${this.key}` } : {};
      const response = await fetch(url.href, { headers, cache: "no-store", credentials: "omit" });
      return response.status === 401 || response.status === 403 ? response.status : 0;
    } catch {
      return 0; // unreachable (or not this gateway's CORS): the usual retry
    }
  }

  refused(status) {
    this.failPending();
    this.paused = true;
    this.emit("refused", { status });
  }

  /** A new key (from a new #key= fragment): connect with it now. */
  setKey(key) {
    this.key = key;
    if (this.ws !== null) this.ws.close();
    else this.retryNow();
  }

  failPending() {
    const lost = [...this.pending.entries()];
    this.pending.clear();
    for (const [id, handler] of lost) {
      handler({
        type: "error",
        request_id: id,
        code: "connection_lost",
        message: "The connection to the gateway was lost before the reply arrived.",
      });
    }
  }

  closed() {
    this.failPending();
    const backoff = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.emit("closed", { delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  retryNow() {
    this.attempt = 0;
    this.paused = false;
    this.connect();
  }

  nextId() {
    this.counter += 1;
    return `web-${this.prefix}-${this.counter}`;
  }

  /** Send a request; handler gets every reply with its request_id and returns true when it is the last. */
  request(message, handler) {
    const id = this.nextId();
    if (!this.connected) {
      const message = this.paused
        ? "Not signed in: open the web chat URL that make up printed (it carries your key)."
        : "Not connected to the gateway; retrying in the background. Try again in a moment.";
      queueMicrotask(() =>
        handler({ type: "error", request_id: id, code: this.paused ? "not_signed_in" : "not_connected", message }),
      );
      return id;
    }
    this.pending.set(id, handler);
    this.ws.send(JSON.stringify({ ...message, request_id: id }));
    return id;
  }

  /** A request with one reply (whatever its type, errors included). */
  call(message) {
    return new Promise((resolve) => {
      this.request(message, (reply) => {
        resolve(reply);
        return true;
      });
    });
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn("ignoring a non-JSON message from the gateway");
      return;
    }
    if (message === null || typeof message !== "object") return;
    const handler = this.pending.get(message.request_id);
    if (handler === undefined) {
      this.emit("unmatched", message);
      return;
    }
    let done = true;
    try {
      done = handler(message) === true;
    } catch (err) {
      console.error("reply handler failed", err);
    }
    if (done) this.pending.delete(message.request_id);
  }
}

// ------------------------------------------------------------------ page state

const state = {
  gateway: new Gateway(null), // its URL is set once config.json is read
  conversationId: null,
  epoch: 0, // bumped by "New conversation": replies for an older conversation no longer change state
  historyLoaded: false,
  waitingForConversation: null, // a Promise while the first question of a new conversation starts it
  selected: null, // the answer view whose sources the side panel shows
  answering: false, // while an answer streams: sending is off (see setAnswering)
  refreshing: false,
  refreshAgain: false,
};

function loadConversationId() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

function saveConversationId(id) {
  state.conversationId = id;
  try {
    if (id) localStorage.setItem(STORAGE_KEY, id);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the conversation just won't survive a reload
  }
  const info = $("conversation-info");
  info.textContent = id ? `Conversation ${id}` : "New conversation — your first question starts it.";
}

// ------------------------------------------------------------------ connection status and banner

function setConnectionStatus(kind, text) {
  const status = $("connection-status");
  status.dataset.state = kind;
  status.textContent = text;
}

function showBanner(delay) {
  // The alert text itself stays the same (so it is announced once); only the detail changes.
  const seconds = Math.max(1, Math.round(delay / 1000));
  $("banner-detail").textContent = `(next attempt in ${seconds} s)`;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

function showSignIn(status) {
  hideBanner();
  $("signin-text").textContent =
    status === 403
      ? "Access denied (403): this key may not use this gateway. Sign in: open the URL `make up` printed."
      : "Sign in (401): open the URL `make up` printed — it carries your key — or add #key=YOUR_KEY to this address.";
  $("signin").hidden = false;
}

function hideSignIn() {
  $("signin").hidden = true;
}

// ------------------------------------------------------------------ the key

/** A key in the fragment (#key=...) moves to sessionStorage and out of the address bar; the stored one. */
function takeKey() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fresh = fragment.get("key");
  if (fresh !== null) {
    fragment.delete("key");
    const rest = fragment.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    try {
      if (fresh) sessionStorage.setItem(KEY_STORAGE, fresh);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // storage disabled: the key lasts as long as the page
      return TOKEN_RE.test(fresh) ? fresh : null;
    }
  }
  let key = null;
  try {
    key = sessionStorage.getItem(KEY_STORAGE);
  } catch {
    key = null;
  }
  if (key && !TOKEN_RE.test(key)) {
    console.warn("ignoring a stored key that is not a valid token");
    return null;
  }
  return key || null;
}

// ------------------------------------------------------------------ chat log

const chatLog = () => $("chat-log");

function removeEmptyHint() {
  const hint = $("chat-empty");
  if (hint) hint.remove();
}

function scrollToEnd(force = false) {
  const log = chatLog();
  const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 120;
  if (force || nearBottom) log.scrollTop = log.scrollHeight;
}

function systemNotice(text, kind = "info", container = chatLog()) {
  removeEmptyHint();
  const note = el("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : null, text });
  container.append(note);
  scrollToEnd(true);
  return note;
}

function addUserMessage(text, container = chatLog(), when = null) {
  removeEmptyHint();
  const article = el(
    "article",
    { class: "msg msg-user", "aria-label": "You asked" },
    el("h3", { class: "who", text: "You" }),
    el("p", { class: "msg-text", text }),
    when ? el("p", { class: "msg-meta", text: formatDate(when) }) : null,
  );
  container.append(article);
  scrollToEnd(true);
  return article;
}

/** An assistant answer: tokens stream into it, then stream_end (or an error) finalises it. */
class AnswerView {
  constructor(question, container = chatLog()) {
    removeEmptyHint();
    this.question = question;
    this.sources = [];
    this.nextIndex = 0;
    this.early = new Map(); // tokens that arrived ahead of their turn, by index
    this.text = document.createTextNode("");
    this.body = el("div", { class: "msg-text answer-text" }, this.text);
    this.meta = el("p", { class: "msg-meta", text: "Thinking…" });
    this.citations = el("div", { class: "citations", hidden: true });
    this.error = el("p", { class: "msg-error", role: "alert", hidden: true });
    this.root = el(
      "article",
      { class: "msg msg-assistant streaming", "aria-label": "Answer", "aria-busy": "true" },
      el("h3", { class: "who", text: "Assistant" }),
      this.body,
      this.error,
      this.citations,
      this.meta,
    );
    container.append(this.root);
    scrollToEnd(true);
  }

  start(sources) {
    this.setSources(sources);
    this.meta.textContent = "Answering…";
  }

  token(index, text) {
    if (typeof index !== "number" || index === this.nextIndex) {
      this.text.appendData(String(text ?? ""));
      this.nextIndex += 1;
      while (this.early.has(this.nextIndex)) {
        this.text.appendData(this.early.get(this.nextIndex));
        this.early.delete(this.nextIndex);
        this.nextIndex += 1;
      }
      scrollToEnd();
    } else if (index > this.nextIndex) {
      this.early.set(index, String(text ?? ""));
    }
  }

  finish({ answer, sources, prompt, usage, timings_ms: timings, created_at: createdAt }) {
    if (typeof answer === "string") this.text.data = answer;
    this.setSources(sources || []);
    this.root.classList.remove("streaming");
    this.root.setAttribute("aria-busy", "false");
    const parts = [];
    if (createdAt) parts.push(formatDate(createdAt));
    if (usage && usage.output_tokens) parts.push(`${usage.output_tokens} tokens`);
    if (timings && typeof timings.total === "number") parts.push(`${(timings.total / 1000).toFixed(1)} s`);
    if (prompt === "no_context") parts.push("no relevant passages found in your documents");
    else if (this.sources.length) parts.push(`${this.sources.length} source${this.sources.length === 1 ? "" : "s"}`);
    this.meta.textContent = parts.join(" · ");
    scrollToEnd();
  }

  fail(reply) {
    this.root.classList.remove("streaming");
    this.root.classList.add("failed");
    this.root.setAttribute("aria-busy", "false");
    this.error.textContent = describeError(reply);
    this.error.hidden = false;
    this.meta.textContent = "No answer";
    scrollToEnd(true);
  }

  setSources(sources) {
    this.sources = Array.isArray(sources) ? sources : [];
    this.citations.replaceChildren();
    if (!this.sources.length) {
      this.citations.hidden = true;
    } else {
      this.citations.hidden = false;
      this.citations.append(el("span", { class: "citations-label", text: "Sources:" }));
      for (const source of this.sources) {
        this.citations.append(
          el("button", {
            type: "button",
            class: "citation",
            title: "Show this source in the sources panel",
            text: `[${source.n}] ${source.title || source.doc_id}`,
            onclick: () => selectAnswer(this, source.n),
          }),
        );
      }
    }
    if (state.selected === this || state.selected === null) selectAnswer(this);
  }
}

function selectAnswer(view, focusN = null) {
  if (state.selected && state.selected !== view) state.selected.root.classList.remove("selected");
  state.selected = view;
  view.root.classList.add("selected");
  renderSources(view, focusN);
}

// ------------------------------------------------------------------ sources panel

function sourceLocation(source) {
  const meta = source.metadata && typeof source.metadata === "object" ? source.metadata : {};
  const page = source.page ?? meta.page;
  const heading = source.heading ?? meta.heading;
  const parts = [];
  if (page !== undefined && page !== null && page !== "") parts.push(`page ${page}`);
  if (heading) parts.push(String(heading));
  return parts.join(" · ");
}

function renderSources(view, focusN = null) {
  const list = $("sources-list");
  const caption = $("sources-caption");
  list.replaceChildren();
  if (!view) {
    caption.textContent = "Sources of the selected answer appear here.";
    return;
  }
  const question = view.question ? `“${view.question}”` : "the selected answer";
  caption.textContent = view.sources.length
    ? `For ${question}:`
    : `No passages were close enough to ${question} to be used as sources.`;
  for (const source of view.sources) {
    const location = sourceLocation(source);
    const distance = typeof source.distance === "number" ? source.distance.toFixed(3) : String(source.distance);
    const details = [`distance ${distance}`, `chunk ${source.chunk}`, `document ${source.doc_id}`];
    if (source.date) details.push(String(source.date));
    const item = el(
      "li",
      { class: "source", id: `source-${source.n}`, tabindex: "-1", "data-n": source.n },
      el(
        "p",
        { class: "source-head" },
        el("span", { class: "source-n", text: `[${source.n}]` }),
        " ",
        el("span", { class: "source-title", text: source.title || source.doc_id }),
      ),
      location ? el("p", { class: "source-location", text: location }) : null,
      el("blockquote", { class: "source-excerpt", text: source.excerpt || "" }),
      el("p", { class: "source-meta", text: details.join(" · ") }),
    );
    list.append(item);
    if (focusN !== null && source.n === focusN) {
      item.classList.add("highlight");
      item.focus();
    }
  }
}

// ------------------------------------------------------------------ chat and history

// A conversation answers one question at a time (the server refuses a second with conversation_busy), so
// sending is off, button and Enter alike, from a question until its stream_end or error. The question box
// stays editable: the next question can be typed meanwhile.
function setAnswering(on) {
  state.answering = on;
  const send = $("send");
  send.disabled = on;
  send.title = on ? "Wait for the answer to finish" : "";
}

async function ask(question) {
  const gateway = state.gateway;
  const epoch = state.epoch;
  setAnswering(true);
  const answered = () => {
    if (epoch === state.epoch) setAnswering(false);
  };
  addUserMessage(question);
  const view = new AnswerView(question);
  selectAnswer(view);
  // The first question of a new conversation creates it: later ones wait for its id.
  if (!state.conversationId && state.waitingForConversation) await state.waitingForConversation;
  if (epoch !== state.epoch) return;
  const message = { action: "chat", question };
  if (state.conversationId) message.conversation_id = state.conversationId;

  let settle = null;
  if (!state.conversationId) {
    state.waitingForConversation = new Promise((resolve) => {
      settle = resolve;
    });
  }
  const release = () => {
    if (settle) {
      settle();
      settle = null;
      state.waitingForConversation = null;
    }
  };

  gateway.request(message, (reply) => {
    switch (reply.type) {
      case "stream_start":
        if (epoch === state.epoch && reply.conversation_id && reply.conversation_id !== state.conversationId) {
          saveConversationId(reply.conversation_id);
          state.historyLoaded = true;
        }
        release();
        view.start(reply.sources);
        return false;
      case "token":
        view.token(reply.index, reply.text);
        return false;
      case "stream_end":
        release();
        answered();
        view.finish(reply);
        return true;
      case "error":
        release();
        answered();
        if (reply.code === "unknown_conversation" && epoch === state.epoch) {
          saveConversationId(null);
          view.fail({ ...reply, message: `${reply.message} — starting a new conversation; ask again.` });
        } else {
          view.fail(reply);
        }
        return true;
      default:
        console.warn("unexpected reply to chat", reply.type);
        return false;
    }
  });
}

// Paged replies (history, list_documents): the most a page may hold (the server's maxima); a page holds
// fewer when they would not fit one 128 KB message.
const HISTORY_PAGE = 200;
const DOCUMENTS_PAGE = 1000;

// Every page of a paged action: follows `next` (sent back as `after`) until it is null. Resolves to the
// last page with `key` holding every page's items, or to the first error reply.
async function callAllPages(message, key, limit) {
  const items = [];
  let after = null;
  for (;;) {
    const request = after === null ? { ...message, limit } : { ...message, limit, after };
    const reply = await state.gateway.call(request);
    if (reply.type === "error") return reply;
    items.push(...(reply[key] || []));
    if (!reply.next || reply.next === after) return { ...reply, [key]: items };
    after = reply.next;
  }
}

async function loadHistory() {
  const id = state.conversationId;
  if (!id || state.historyLoaded) return;
  const epoch = state.epoch;
  // History goes above anything asked meanwhile.
  const container = el("div", { class: "history", "aria-label": "Earlier messages" });
  chatLog().prepend(container);
  const loading = systemNotice("Restoring the conversation…", "info", container);
  const reply = await callAllPages({ action: "history", conversation_id: id }, "messages", HISTORY_PAGE);
  loading.remove();
  if (epoch !== state.epoch) {
    container.remove();
    return;
  }
  if (reply.type === "history") {
    state.historyLoaded = true;
    let question = "";
    let last = null;
    for (const m of reply.messages || []) {
      if (m.role === "user") {
        question = m.content;
        addUserMessage(m.content, container, m.created_at);
      } else {
        const view = new AnswerView(question, container);
        view.finish({ answer: m.content, sources: m.sources, prompt: m.prompt, created_at: m.created_at });
        last = view;
      }
    }
    if (last) selectAnswer(last);
    if (!(reply.messages || []).length) container.remove();
    scrollToEnd(true);
  } else if (reply.type === "error" && reply.code === "unknown_conversation") {
    state.historyLoaded = true;
    saveConversationId(null);
    systemNotice("The saved conversation no longer exists; starting a new one.", "info", container);
  } else if (reply.type === "error") {
    container.remove();
    systemNotice(`Couldn't restore the conversation — ${describeError(reply)}`, "error");
  }
}

function newConversation() {
  state.epoch += 1;
  state.historyLoaded = true;
  state.waitingForConversation = null;
  state.selected = null;
  setAnswering(false); // an answer still streaming belongs to the old conversation
  saveConversationId(null);
  chatLog().replaceChildren(
    el("p", { id: "chat-empty", class: "muted empty", text: "New conversation. Ask a question about your documents." }),
  );
  renderSources(null);
  $("question").focus();
}

// ------------------------------------------------------------------ documents

async function refreshDocuments() {
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  state.refreshing = true;
  const status = $("documents-status");
  status.classList.remove("error");
  status.textContent = "Loading…";
  try {
    const reply = await callAllPages({ action: "list_documents" }, "documents", DOCUMENTS_PAGE);
    if (reply.type === "document_list") {
      renderDocuments(reply.documents || []);
    } else {
      status.classList.add("error");
      status.textContent = `Couldn't list documents — ${describeError(reply)}`;
    }
  } finally {
    state.refreshing = false;
    if (state.refreshAgain) {
      state.refreshAgain = false;
      refreshDocuments();
    }
  }
}

function renderDocuments(documents) {
  const list = $("document-list");
  const status = $("documents-status");
  list.replaceChildren();
  status.textContent = documents.length
    ? `${documents.length} document${documents.length === 1 ? "" : "s"}`
    : "No documents yet — upload one above.";
  for (const doc of documents) {
    const title = doc.title || doc.name || doc.id;
    const details = [];
    if (doc.name && doc.name !== title) details.push(doc.name);
    if (doc.id !== title) details.push(`id ${doc.id}`);
    if (typeof doc.size === "number") details.push(formatBytes(doc.size));
    details.push(`${doc.chunks ?? 0} chunk${doc.chunks === 1 ? "" : "s"}`);
    const when = doc.indexed_at || doc.uploaded_at;
    if (when) details.push(`${doc.indexed_at ? "indexed" : "uploaded"} ${formatDate(when)}`);
    const error = el("p", { class: "doc-error", role: "alert", hidden: true });
    const button = el("button", {
      type: "button",
      class: "danger small",
      "aria-label": `Delete ${title}`,
      text: "Delete",
    });
    button.addEventListener("click", () => deleteDocument(doc, title, button, error));
    list.append(
      el(
        "li",
        { class: "document", "data-doc-id": doc.id },
        el(
          "div",
          { class: "document-main" },
          el(
            "p",
            { class: "document-head" },
            el("span", { class: "document-title", text: title }),
            " ",
            el("span", { class: `badge badge-${doc.status}`, text: doc.status }),
          ),
          el("p", { class: "document-meta", text: details.join(" · ") }),
          error,
        ),
        button,
      ),
    );
  }
}

async function deleteDocument(doc, title, button, error) {
  button.disabled = true;
  button.textContent = "Deleting…";
  error.hidden = true;
  const reply = await state.gateway.call({ action: "delete_document", doc_id: doc.id });
  if (reply.type === "document_deleted") {
    $("documents-notice").textContent = `Deleted “${title}” (${reply.chunks_deleted} chunks).`;
    refreshDocuments();
  } else {
    button.disabled = false;
    button.textContent = "Delete";
    error.textContent = `Couldn't delete — ${describeError(reply)}`;
    error.hidden = false;
  }
}

// ------------------------------------------------------------------ uploads

const EXTENSION_TYPES = {
  md: "text/markdown",
  markdown: "text/markdown",
  txt: "text/plain",
  text: "text/plain",
  pdf: "application/pdf",
  html: "text/html",
  htm: "text/html",
  json: "application/json",
};

function contentTypeOf(file) {
  if (file.type) return file.type;
  const ext = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
  return EXTENSION_TYPES[ext] || "application/octet-stream";
}

class UploadView {
  constructor(file) {
    this.status = el("p", { class: "upload-status", text: "Waiting…" });
    this.progress = el("progress", { max: "100", value: "0", "aria-label": `Upload progress of ${file.name}` });
    this.root = el(
      "li",
      { class: "upload" },
      el("p", { class: "upload-name", text: `${file.name} (${formatBytes(file.size)})` }),
      this.progress,
      this.status,
    );
    $("upload-list").prepend(this.root);
  }

  step(text) {
    this.status.textContent = text;
  }

  percent(fraction) {
    this.progress.value = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
  }

  indeterminate() {
    this.progress.removeAttribute("value");
  }

  done(text) {
    this.progress.value = 100;
    this.root.classList.add("done");
    this.status.textContent = text;
  }

  fail(reply) {
    this.progress.value = 0;
    this.root.classList.add("failed");
    this.status.setAttribute("role", "alert");
    this.status.textContent = `Failed — ${describeError(reply)}`;
  }
}

/** An S3-style XML error body (<Error><Code/><Message/></Error>) as {code, message}; parsed, never rendered. */
function s3Error(xhr) {
  let code = `http_${xhr.status}`;
  let message = xhr.statusText || "the upload was refused";
  try {
    const doc = new DOMParser().parseFromString(xhr.responseText || "", "application/xml");
    const c = doc.querySelector("Error > Code");
    const m = doc.querySelector("Error > Message");
    if (c && c.textContent) code = `${code} ${c.textContent}`;
    if (m && m.textContent) message = m.textContent;
  } catch {
    // not XML: keep the status line
  }
  return { code, message };
}

function putFile(ticket, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(ticket.method || "PUT", ticket.url);
    for (const [name, value] of Object.entries(ticket.headers || {})) {
      try {
        xhr.setRequestHeader(name, value);
      } catch (err) {
        console.warn("header not allowed by the browser", name, err);
      }
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => (xhr.status >= 200 && xhr.status < 300 ? resolve() : reject(s3Error(xhr)));
    xhr.onerror = () =>
      reject({
        code: "upload_failed",
        message: "the upload URL could not be reached (network error, or the storage endpoint refuses this origin)",
      });
    xhr.onabort = () => reject({ code: "upload_aborted", message: "the upload was aborted" });
    xhr.send(file);
  });
}

async function uploadFile(file) {
  const view = new UploadView(file);
  if (file.size === 0) {
    view.fail({ code: "empty_file", message: "the file is empty" });
    return;
  }
  view.step("Requesting an upload URL…");
  const ticket = await state.gateway.call({
    action: "upload_url",
    filename: file.name,
    content_type: contentTypeOf(file),
    size: file.size,
  });
  if (ticket.type !== "upload_url") {
    view.fail(ticket.type === "error" ? ticket : { code: "unexpected_reply", message: String(ticket.type) });
    return;
  }
  view.step("Uploading…");
  try {
    await putFile(ticket, file, (fraction) => {
      view.percent(fraction);
      view.step(`Uploading… ${Math.round(fraction * 100)}%`);
    });
  } catch (err) {
    view.fail(err);
    return;
  }
  view.percent(1);
  view.indeterminate();
  view.step("Uploaded; indexing…");
  const result = await state.gateway.call({ action: "ingest_object", key: ticket.key });
  if (result.type === "ingest_result") {
    const replaced = result.replaced_chunks ? `, replacing ${result.replaced_chunks}` : "";
    view.done(`Indexed “${result.doc_id}”: ${result.chunks} chunk${result.chunks === 1 ? "" : "s"}${replaced}.`);
  } else {
    view.fail(result.type === "error" ? result : { code: "unexpected_reply", message: String(result.type) });
  }
  refreshDocuments();
}

// ------------------------------------------------------------------ wiring

async function gatewayUrl() {
  let path = DEFAULT_WS_PATH;
  let gateways = [];
  let configured = null; // the deployed WebSocket API when it is not this page's origin (AWS)
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) {
      const config = await response.json();
      if (typeof config.websocket_path === "string" && config.websocket_path.startsWith("/")) {
        path = config.websocket_path;
      }
      if (Array.isArray(config.gateways)) gateways = config.gateways.filter((g) => typeof g === "string");
      if (typeof config.websocket_url === "string") {
        try {
          const url = new URL(config.websocket_url);
          if (url.protocol === "ws:" || url.protocol === "wss:") configured = url;
        } catch {
          console.warn("config.json: websocket_url is not a URL; using this page's origin");
        }
      }
    }
  } catch (err) {
    console.warn("config.json unavailable; using the default WebSocket path", err);
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const own = configured ? `${configured.protocol}//${configured.host}` : `${scheme}//${location.host}`;
  const override = new URLSearchParams(location.search).get("ws");
  if (override) {
    // The page sends its key to this gateway: only its own origin, or one its config allows.
    try {
      const url = new URL(override);
      const origin = `${url.protocol}//${url.host}`;
      if ((url.protocol === "ws:" || url.protocol === "wss:") && (origin === own || gateways.includes(origin))) {
        return url.href;
      }
    } catch {
      // fall through to this page's own gateway
    }
    console.warn("ignoring ?ws=: not this page's gateway, nor one its config allows");
  }
  return configured ? configured.href : `${own}${path}`;
}

function wireControls() {
  const form = $("chat-form");
  const question = $("question");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.answering) return; // (Enter too) one question at a time: the text stays for later
    const text = question.value.trim();
    if (!text) {
      question.focus();
      return;
    }
    question.value = "";
    ask(text);
    question.focus();
  });
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  $("new-conversation").addEventListener("click", newConversation);
  $("refresh-documents").addEventListener("click", () => refreshDocuments());
  $("retry-now").addEventListener("click", () => state.gateway.retryNow());
  $("signin-retry").addEventListener("click", () => state.gateway.retryNow());

  const fileInput = $("file-input");
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...fileInput.files];
    if (!files.length) {
      fileInput.focus();
      return;
    }
    fileInput.value = "";
    for (const file of files) await uploadFile(file);
  });
}

async function main() {
  wireControls();
  saveConversationId(loadConversationId());
  const gateway = state.gateway;
  gateway.addEventListener("connecting", () => {
    setConnectionStatus("connecting", "Connecting…");
  });
  gateway.addEventListener("open", () => {
    hideBanner();
    hideSignIn();
    setConnectionStatus("open", "Connected");
    loadHistory();
    refreshDocuments();
  });
  gateway.addEventListener("closed", (event) => {
    setConnectionStatus("closed", "Disconnected");
    hideSignIn();
    showBanner(event.detail.delay);
  });
  gateway.addEventListener("refused", (event) => {
    setConnectionStatus("refused", "Not signed in");
    showSignIn(event.detail.status);
  });
  gateway.addEventListener("unmatched", (event) => {
    const message = event.detail;
    if (message.type === "error") {
      systemNotice(`The gateway reported ${describeError(message)}`, "error");
    } else if (message.type === undefined && typeof message.message === "string") {
      // API Gateway's own notices carry no request id. "Endpoint request timed out": the function runs on
      // and its replies keep coming, so nothing to do. "Too Many Requests": the stage throttled a message,
      // which was never delivered; the question can be sent again.
      if (message.message === "Too Many Requests") {
        setAnswering(false);
        systemNotice("The gateway is throttling messages: wait a moment, then send again.", "error");
      } else if (message.message !== "Endpoint request timed out") {
        systemNotice(`The gateway said: ${message.message}`, "error");
      }
    }
  });
  window.addEventListener("online", () => gateway.retryNow());
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).has("key")) gateway.setKey(takeKey());
  });
  gateway.key = takeKey();
  gateway.url = await gatewayUrl();
  gateway.connect();
}

main();
