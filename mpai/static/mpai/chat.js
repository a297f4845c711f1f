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
  let socket = null;
  let conversation = null;
  let current = null; // the <li> of the reply being streamed
  let pending = null; // the frame to resend after a reconnect

  function addItem(role, text) {
    const li = document.createElement("li");
    li.className = role;
    li.textContent = text;
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  async function loadHistory() {
    const response = await fetch(root.dataset.historyUrl + "?per_page=50", {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return;
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
      status.textContent = "";
      if (pending) socket.send(JSON.stringify(pending));
    });
    socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      status.textContent = "Reconnecting…";
      setTimeout(connect, 1000);
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
        if (current) current.textContent += frame.text;
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
    const content = input.value;
    if (!content.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    const clientId = (crypto.randomUUID && crypto.randomUUID()) || String(Date.now());
    pending = { type: "chat.message", conversation, content, client_id: clientId };
    addItem("user", content);
    input.value = "";
    setBusy(true);
    socket.send(JSON.stringify(pending));
  });

  stopButton.addEventListener("click", () => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "chat.cancel" }));
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  loadHistory().finally(connect);
})();
