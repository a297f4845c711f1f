// The sidebar: the member's conversations (newest activity first, page by page as the
// list scrolls), New chat, rename, delete, and search over their messages.

const SEARCH_DELAY_MS = 300;

function untitled(title) {
  return title && title.trim() ? title : "Untitled chat";
}

// An excerpt with «…» around the matches -> text nodes and <mark>s (never HTML).
function excerptNodes(excerpt) {
  const nodes = [];
  for (const [index, part] of String(excerpt).split(/[«»]/).entries()) {
    if (!part) continue;
    if (index % 2) {
      const mark = document.createElement("mark");
      mark.textContent = part;
      nodes.push(mark);
    } else nodes.push(document.createTextNode(part));
  }
  return nodes;
}

export class Sidebar {
  // options: api, onOpen(id, title), onNew(), onDeleted(id), onRenamed(id, title)
  constructor(root, options) {
    this.root = root;
    this.options = options;
    this.api = options.api;
    this.list = root.querySelector("#mpai-conversations");
    this.status = root.querySelector("#mpai-conversations-status");
    this.lists = root.querySelector(".mpai-sidebar-lists");
    this.searchBox = root.querySelector("#mpai-search");
    this.searchResults = root.querySelector("#mpai-search-results");
    this.searchStatus = root.querySelector("#mpai-search-status");
    this.nextUrl = null;
    this.loading = false;
    this.active = null;
    this.searchTimer = null;
    this.searchSeq = 0;
    root.querySelector("#mpai-new").addEventListener("click", () => options.onNew());
    root.querySelector("#mpai-search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.searchBox.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.search(), SEARCH_DELAY_MS);
    });
    this.searchBox.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.searchBox.value) {
        event.stopPropagation();
        this.searchBox.value = "";
        this.search();
      }
    });
    this.lists.addEventListener("scroll", () => this.maybeLoadMore());
  }

  async load() {
    this.list.replaceChildren();
    this.nextUrl = null;
    await this.loadPage(null);
  }

  async loadPage(url) {
    this.loading = true;
    this.status.textContent = "Loading chats…";
    try {
      const page = await this.api.conversations(url);
      for (const row of page.results) {
        if (!this.find(row.id)) this.list.append(this.entry(row));
      }
      this.nextUrl = page.next;
      this.status.textContent = this.list.children.length ? "" : "No chats yet.";
    } catch {
      this.status.textContent = "Your chats couldn't be loaded.";
    } finally {
      this.loading = false;
    }
    this.maybeLoadMore();
  }

  maybeLoadMore() {
    if (this.loading || !this.nextUrl || !this.searchResults.hidden) return;
    const box = this.lists;
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) this.loadPage(this.nextUrl);
  }

  find(id) {
    return this.list.querySelector(`li[data-conversation="${Number(id)}"]`);
  }

  entry(row) {
    const li = document.createElement("li");
    li.className = "mpai-conversation";
    li.dataset.conversation = String(row.id);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "mpai-conversation-open";
    open.textContent = untitled(row.title);
    open.title = `${open.textContent} (last active ${new Date(row.updated_at).toLocaleString()})`;
    open.addEventListener("click", () => this.options.onOpen(row.id, open.textContent));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "mpai-button mpai-button--small mpai-icon-button";
    rename.textContent = "\u270E";
    rename.addEventListener("click", () => this.startRename(li));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "mpai-button mpai-button--small mpai-icon-button";
    remove.textContent = "\u2715";
    remove.addEventListener("click", () => this.remove(li));
    li.append(open, rename, remove);
    this.label(li);
    if (row.id === this.active) open.setAttribute("aria-current", "true");
    return li;
  }

  label(li) {
    const [open, rename, remove] = li.querySelectorAll("button");
    rename.setAttribute("aria-label", "Rename " + open.textContent);
    remove.setAttribute("aria-label", "Delete " + open.textContent);
    rename.title = "Rename";
    remove.title = "Delete";
  }

  setActive(id) {
    this.active = id;
    for (const button of this.list.querySelectorAll("[aria-current]")) button.removeAttribute("aria-current");
    const li = id && this.find(id);
    if (li) li.querySelector(".mpai-conversation-open").setAttribute("aria-current", "true");
  }

  // A message was sent in `id`: it moves to the top (fetched when it is new).
  async touch(id) {
    let li = this.find(id);
    if (!li) {
      try {
        li = this.entry(await this.api.conversation(id));
      } catch {
        return;
      }
      this.status.textContent = "";
    }
    this.list.prepend(li);
    this.setActive(id);
  }

  titleOf(id) {
    const li = this.find(id);
    return li ? li.querySelector(".mpai-conversation-open").textContent : "";
  }

  startRename(li) {
    const open = li.querySelector(".mpai-conversation-open");
    const form = document.createElement("form");
    form.className = "mpai-rename";
    const input = document.createElement("input");
    input.type = "text";
    input.maxLength = 200;
    input.value = open.textContent;
    input.setAttribute("aria-label", "New name for " + open.textContent);
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "mpai-button mpai-button--small";
    save.textContent = "Save";
    form.append(input, save);
    li.hidden = true;
    li.after(form);
    input.focus();
    input.select();
    const done = (focus = true) => {
      form.remove();
      li.hidden = false;
      if (focus) open.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        done();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      if (!title) return done();
      try {
        const row = await this.api.rename(li.dataset.conversation, title);
        open.textContent = untitled(row.title);
        this.label(li);
        this.options.onRenamed(row.id, open.textContent);
        done();
      } catch {
        input.setAttribute("aria-invalid", "true");
        this.status.textContent = "The chat couldn't be renamed. Try again.";
      }
    });
  }

  async remove(li) {
    const title = li.querySelector(".mpai-conversation-open").textContent;
    if (!window.confirm(`Delete the chat “${title}” and all its messages? This can't be undone.`)) return;
    const id = Number(li.dataset.conversation);
    try {
      await this.api.remove(id);
    } catch (error) {
      if (error.status !== 404) {
        this.status.textContent = "The chat couldn't be deleted. Try again.";
        return;
      }
    }
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    this.status.textContent = "Chat deleted.";
    (next ? next.querySelector("button") : this.root.querySelector("#mpai-new")).focus();
    this.options.onDeleted(id);
  }

  async search() {
    clearTimeout(this.searchTimer);
    const q = this.searchBox.value.trim();
    const seq = ++this.searchSeq;
    if (!q) {
      this.searchResults.hidden = true;
      this.searchResults.replaceChildren();
      this.searchStatus.textContent = "";
      return;
    }
    this.searchStatus.textContent = "Searching…";
    try {
      const data = await this.api.search(q);
      if (seq !== this.searchSeq) return; // a newer search is under way
      this.showResults(data);
    } catch {
      if (seq === this.searchSeq) this.searchStatus.textContent = "Search failed. Try again.";
    }
  }

  showResults(data) {
    const items = [];
    for (const match of data.conversations || []) {
      items.push(this.result(match.id, untitled(match.title), excerptNodes(match.excerpt), "Chat title"));
    }
    for (const row of data.results) {
      const who = row.role === "user" ? "You" : "Assistant";
      items.push(this.result(row.conversation, untitled(row.conversation_title), excerptNodes(row.excerpt), who, row.created_at));
    }
    this.searchResults.replaceChildren(...items);
    this.searchResults.hidden = false;
    const count = items.length;
    this.searchStatus.textContent = count ? `${count} result${count === 1 ? "" : "s"}` : "No matches.";
  }

  result(conversation, title, excerpt, who, createdAt) {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "mpai-search-result";
    const heading = document.createElement("span");
    heading.className = "mpai-search-title";
    heading.textContent = title;
    const text = document.createElement("span");
    text.className = "mpai-search-excerpt";
    text.append(who + ": ", ...excerpt);
    open.append(heading, text);
    if (createdAt) open.title = new Date(createdAt).toLocaleString();
    open.addEventListener("click", () => this.options.onOpen(conversation, title));
    li.append(open);
    return li;
  }
}
