// mpai chat page: a client of the ws/mpai/chat/ websocket (frames: see README).
(() => {
  "use strict";
  const root = document.getElementById("mpai-chat");
  if (!root) return;
  const log = document.getElementById("mpai-log");
  const form = document.getElementById("mpai-form");
  const input = document.getElementById("mpai-input");
  const sendButton = document.getElementById("mpai-send");
  const stopButton = document.getElementById("mpai-stop");
  const status = document.getElementById("mpai-status");
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  let socket = null;
  let connected = false; // the websocket is open
  let busy = false; // a message was sent and its reply has not ended
  let retryMs = RETRY_MIN_MS;
  let conversation = null;
  let current = null; // the <li> of the reply being streamed
  let pending = null; // the frame to resend after a reconnect
  let notice = ""; // shown in the status line once connected

  function addItem(role, text) {
    const li = document.createElement("li");
    li.className = role;
    li.textContent = text;
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function updateButtons() {
    // Send only on an open socket and when no reply is streaming; Stop only while one is.
    sendButton.disabled = busy || !connected;
    stopButton.disabled = !busy || !connected;
  }

  function setBusy(value) {
    busy = value;
    updateButtons();
  }

  function newClientId() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  async function loadHistory() {
    const response = await fetch(root.dataset.historyUrl + "?per_page=50", {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error("history: HTTP " + response.status);
    const data = await response.json();
    const rows = data.results.slice().reverse();
    for (const row of rows) {
      addItem(row.role + (row.status === "error" ? " error" : ""), row.content);
      conversation = row.conversation;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    socket.addEventListener("open", () => {
      connected = true;
      retryMs = RETRY_MIN_MS;
      status.textContent = notice;
      updateButtons();
      if (pending) socket.send(JSON.stringify(pending));
    });
    socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      connected = false;
      updateButtons();
      status.textContent = "Reconnecting…";
      // Back off while the server refuses us (e.g. signed out elsewhere) or is down.
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    });
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "chat.started":
        conversation = frame.conversation;
        // A resend after a reconnect replays the same message: restart its text.
        if (!current || current.dataset.message !== String(frame.message)) current = addItem("assistant", "");
        current.textContent = "";
        current.dataset.message = String(frame.message);
        break;
      case "chat.delta":
        if (current) {
          current.textContent += frame.text;
          current.scrollIntoView({ block: "end" });
        }
        break;
      case "chat.completed":
        status.textContent = frame.status === "cancelled" ? "Stopped." : "";
        current = null;
        pending = null;
        setBusy(false);
        break;
      case "chat.error":
        if (current) current.classList.add("error");
        status.textContent = frame.detail;
        current = null;
        pending = null;
        setBusy(false);
        break;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Enter calls requestSubmit(), which a disabled Send button does not stop: a second
    // message while one streams would get "busy" and lose the reply in progress.
    if (busy || !connected) return;
    const content = input.value;
    if (!content.trim()) return;
    pending = { type: "chat.message", conversation, content, client_id: newClientId() };
    addItem("user", content);
    input.value = "";
    setBusy(true);
    socket.send(JSON.stringify(pending));
  });

  stopButton.addEventListener("click", () => {
    if (busy && connected) socket.send(JSON.stringify({ type: "chat.cancel" }));
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  status.textContent = "Connecting…";
  updateButtons();
  loadHistory()
    .catch(() => {
      notice = "Could not load the earlier messages.";
    })
    .finally(connect);
})();
