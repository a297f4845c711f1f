// mpai chat widget: the entry module. It wires the sidebar (conversations, search),
// the message log, the message box and the websocket of ws/mpai/chat/ (frames: README,
// "Websocket"), reading its config from the data- attributes of #mpai-chat
// ({% mpai_chat %}). The modules under chat/ each do one job.

import { Api, ApiError } from "./chat/api.js";
import { Composer } from "./chat/composer.js";
import { MessageList } from "./chat/messages.js";
import { Sidebar } from "./chat/sidebar.js";
import { ChatSocket } from "./chat/socket.js";
import { Turns } from "./chat/turns.js";

const STORAGE_KEY = "mpai.conversation";
const PHONE = window.matchMedia("(max-width: 760px)");

function remember(id) {
  try {
    if (id === null) sessionStorage.removeItem(STORAGE_KEY);
    else sessionStorage.setItem(STORAGE_KEY, String(id));
  } catch {
    // storage off: the page simply opens on a new chat
  }
}

function remembered() {
  try {
    const value = Number(sessionStorage.getItem(STORAGE_KEY));
    return Number.isInteger(value) && value > 0 ? value : null;
  } catch {
    return null;
  }
}

function start(root) {
  const api = new Api(root);
  const status = root.querySelector("#mpai-status");
  const title = root.querySelector("#mpai-title");
  const toggle = root.querySelector("#mpai-sidebar-toggle");
  const chat = { conversation: null, previousUrl: null, loadingOlder: false, opening: 0 };

  function setSidebar(open) {
    root.classList.toggle("mpai-sidebar-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    if (open) root.querySelector("#mpai-new").focus();
  }

  function setConversation(id, name) {
    chat.conversation = id;
    remember(id);
    chat.sidebar.setActive(id);
    title.textContent = id === null ? "New chat" : name || chat.sidebar.titleOf(id) || "Chat";
  }

  function newChat(focus = true) {
    chat.opening += 1;
    setConversation(null);
    chat.previousUrl = null;
    chat.messages.clear();
    if (PHONE.matches) setSidebar(false);
    if (focus) chat.composer.focus();
  }

  async function firstPage(id) {
    try {
      return await api.newestMessages(id);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 400) throw error;
    }
    // The reversed cursor refused: read forward to the end instead.
    const rows = [];
    let page = await api.firstMessages(id);
    rows.push(...page.results);
    while (page.next) {
      page = await api.page(page.next);
      rows.push(...page.results);
    }
    return { results: rows, previous: null };
  }

  async function openConversation(id, name) {
    const seq = ++chat.opening;
    setConversation(id, name);
    chat.previousUrl = null;
    chat.messages.clear();
    chat.messages.showWelcome(false);
    chat.messages.setHistoryStatus("Loading messages…");
    if (PHONE.matches) setSidebar(false);
    let page;
    try {
      page = await firstPage(id);
    } catch (error) {
      if (seq !== chat.opening) return;
      if (error instanceof ApiError && error.status === 404) {
        newChat(false); // deleted meanwhile (or another member's, remembered by this tab)
      } else chat.messages.setHistoryStatus("The messages couldn't be loaded. Reload the page to try again.");
      return;
    }
    if (seq !== chat.opening) return;
    chat.messages.appendRows(page.results);
    if (!page.results.length) chat.messages.showWelcome(true);
    chat.previousUrl = page.previous;
    chat.messages.setHistoryStatus(page.previous ? "" : page.results.length ? "This is the start of the chat." : "");
    chat.messages.scrollToEnd();
    await fillView(seq);
  }

  // Older pages until the log can scroll (then the scroll handler takes over).
  async function fillView(seq) {
    const scroller = chat.messages.scroller;
    while (seq === chat.opening && chat.previousUrl && scroller.scrollHeight <= scroller.clientHeight + 40) {
      if (!(await loadOlder())) break;
    }
  }

  async function loadOlder() {
    if (chat.loadingOlder || !chat.previousUrl) return false;
    const seq = chat.opening;
    chat.loadingOlder = true;
    chat.messages.setHistoryStatus("Loading earlier messages…");
    try {
      const page = await api.page(chat.previousUrl);
      if (seq !== chat.opening) return false;
      chat.messages.prependRows(page.results);
      chat.previousUrl = page.previous;
      chat.messages.setHistoryStatus(page.previous ? "" : "This is the start of the chat.");
      return true;
    } catch {
      if (seq === chat.opening) chat.messages.setHistoryStatus("Earlier messages couldn't be loaded. Scroll up to try again.");
      return false;
    } finally {
      chat.loadingOlder = false;
    }
  }

  chat.messages = new MessageList(root, { api, onRetry: (question) => chat.turns.send(question) });
  chat.composer = new Composer(root, {
    maxLength: Number(root.dataset.maxLength) || 8000,
    onSend: (text) => chat.turns.send(text),
    onStop: () => chat.turns.stop(),
  });
  chat.sidebar = new Sidebar(root, {
    api,
    onOpen: (id, name) => openConversation(id, name),
    onNew: () => newChat(),
    onDeleted: (id) => {
      if (id === chat.conversation) newChat();
    },
    onRenamed: (id, name) => {
      if (id === chat.conversation) title.textContent = name;
    },
  });
  chat.socket = new ChatSocket(root.dataset.wsPath, {
    onOpen: () => {
      status.textContent = "";
      chat.composer.set({ connected: true });
      chat.turns.onOpen();
    },
    onClose: () => {
      status.textContent = "Reconnecting…";
      chat.composer.set({ connected: false });
    },
    onFrame: (frame) => chat.turns.onFrame(frame),
  });
  chat.live = root.querySelector("#mpai-live");
  chat.newChat = newChat;
  // A turn started in `id`: a new chat shown now becomes that conversation.
  chat.adopt = async (id, shown) => {
    if (shown && chat.conversation === null) setConversation(id);
    await chat.sidebar.touch(id);
    if (chat.conversation === id) title.textContent = chat.sidebar.titleOf(id) || title.textContent;
  };
  chat.turns = new Turns(chat);

  chat.messages.scroller.addEventListener("scroll", () => {
    if (chat.messages.scroller.scrollTop < 150) loadOlder();
  });
  for (const suggestion of root.querySelectorAll(".mpai-suggestion")) {
    suggestion.addEventListener("click", () => {
      if (!chat.turns.send(suggestion.textContent)) {
        chat.composer.restore(suggestion.textContent);
        chat.composer.focus();
      }
    });
  }
  toggle.addEventListener("click", () => setSidebar(!root.classList.contains("mpai-sidebar-open")));
  root.querySelector("#mpai-sidebar-close").addEventListener("click", () => {
    setSidebar(false);
    toggle.focus();
  });
  root.querySelector(".mpai-pane").addEventListener("click", (event) => {
    if (root.classList.contains("mpai-sidebar-open") && event.target !== toggle && !toggle.contains(event.target)) {
      setSidebar(false); // a tap beside the open sidebar closes it
    }
  });
  root.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && root.classList.contains("mpai-sidebar-open") && !chat.turns.busy) {
      setSidebar(false);
      toggle.focus();
    }
  });

  status.textContent = "Connecting…";
  chat.sidebar.load();
  const saved = remembered();
  const opened = saved ? openConversation(saved) : Promise.resolve(newChat(false));
  // The websocket opens once the shown messages are in: a new one goes after them.
  opened.catch(() => {}).finally(() => chat.socket.connect());
}

const root = document.getElementById("mpai-chat");
if (root) start(root);
