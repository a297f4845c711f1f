// The websocket of ws/mpai/chat/ (JSON frames), reconnecting by itself with
// exponential backoff and jitter (1 s, 2 s, 4 s … at most 30 s, each ±20 %).

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;

export function retryDelay(attempt) {
  const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt);
  const jittered = base * (0.8 + Math.random() * 0.4);
  return Math.round(Math.min(RETRY_MAX_MS, Math.max(RETRY_MIN_MS, jittered)));
}

export class ChatSocket {
  // handlers: onOpen(), onClose(delayMs), onFrame(frame)
  constructor(path, handlers) {
    this.path = path;
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + this.path);
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.handlers.onOpen();
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // not ours to show
      }
      if (frame && typeof frame.type === "string") this.handlers.onFrame(frame);
    });
    socket.addEventListener("close", () => {
      if (socket !== this.socket) return;
      this.socket = null;
      // Back off while the server refuses us (e.g. signed out elsewhere) or is down.
      const delay = retryDelay(this.attempt);
      this.attempt += 1;
      this.timer = setTimeout(() => this.connect(), delay);
      this.handlers.onClose(delay);
    });
  }

  send(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }
}
