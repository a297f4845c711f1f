// Assistant replies: Markdown (marked) -> HTML sanitised by DOMPurify into a DOM
// fragment (never innerHTML of unsanitised text). Raw HTML in a reply is shown as
// text (marked's html tokens are escaped), and DOMPurify keeps only formatting: no
// scripts, event handlers, forms, images or styles. Code blocks get a Copy button.

const ALLOWED_TAGS = [
  "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
  "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table",
  "tbody", "td", "th", "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "class", "start", "align"];

let hooked = false;
let markdown = null; // the Marked instance, made on first use

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (char) => ESCAPES[char]);
}

function parser(library) {
  if (!markdown) {
    markdown = new library.Marked({
      gfm: true,
      breaks: true,
      async: false,
      renderer: {
        html(token) {
          const text = escapeHtml(token.text);
          return token.block ? "<p>" + text + "</p>\n" : text;
        },
      },
    });
  }
  return markdown;
}

function addLinkHook(purify) {
  if (hooked) return;
  hooked = true;
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    if (node.hasAttribute("class") && !/^language-[\w-]+$/.test(node.getAttribute("class"))) {
      node.removeAttribute("class");
    }
  });
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the selection copy
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "mpai-offscreen";
  document.body.append(area);
  area.select();
  let done = false;
  try {
    done = document.execCommand("copy");
  } catch {
    done = false;
  }
  area.remove();
  return done;
}

export function copyButton(label, getText) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "mpai-button mpai-button--small";
  button.textContent = label;
  button.addEventListener("click", async () => {
    const ok = await copyText(getText());
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = label;
    }, 2000);
  });
  return button;
}

function addCodeCopyButtons(fragment) {
  for (const pre of fragment.querySelectorAll("pre")) {
    const wrap = document.createElement("div");
    wrap.className = "mpai-code";
    pre.replaceWith(wrap);
    wrap.append(copyButton("Copy code", () => pre.textContent), pre);
  }
}

// Replace the children of `target` by `markdown` rendered and sanitised.
export function renderMarkdown(target, text) {
  const library = window.marked;
  const purify = window.DOMPurify;
  if (!library || !library.Marked || !purify || !purify.isSupported) {
    target.textContent = text; // no renderer: plain text is always safe
    return;
  }
  addLinkHook(purify);
  const html = parser(library).parse(text).trim();
  const fragment = purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
  addCodeCopyButtons(fragment);
  target.replaceChildren(fragment);
}
