// The duplicates review page: groups side by side from /api/duplicates, a page at a time, with
// quarantine / restore / dismiss (needs the API token when one is set) and a CSV export.
(function () {
  "use strict";

  const canWrite = document.body.dataset.canWrite === "true";
  const groupsBox = document.getElementById("dups-groups");
  const status = document.getElementById("dups-status");
  const more = document.getElementById("dups-more");
  const kind = document.getElementById("dups-kind");
  const exportLink = document.getElementById("dups-export");
  const quarantineBox = document.getElementById("dups-quarantine");
  const quarantineList = document.getElementById("dups-quarantine-list");
  let next = null;
  let shown = 0;

  function api(url, init = {}) {
    const headers = new Headers(init.headers || {});
    headers.set("X-Loupe-Request", "1");
    return window.fetch(url, { ...init, headers, credentials: "same-origin" });
  }

  async function json(response) {
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function pageUrl(cursor) {
    const params = new URLSearchParams({ limit: "20" });
    if (kind.value) params.set("kind", kind.value);
    if (cursor) params.set("cursor", cursor);
    return `/api/duplicates?${params}`;
  }

  function picture(image, keep) {
    const facts = [`${image.width}×${image.height}`];
    if (image.taken_at) facts.push(image.taken_at.slice(0, 19).replace("T", " "));
    if (image.camera) facts.push(image.camera);
    facts.push(image.evidence === "centre" ? "centre" : image.evidence === "exact" ? "same file"
      : image.evidence === "verified" ? `verified (${image.inliers} points)` : `score ${image.score.toFixed(3)}`);
    return el("figure", { class: `dups-pic${keep ? " keep" : ""}`, "data-id": String(image.id) },
      el("a", { href: image.file_url, target: "_blank", rel: "noopener" },
        el("img", { src: image.thumb_url, alt: image.path.split("/").pop(), loading: "lazy" })),
      el("figcaption", {},
        keep ? el("strong", { text: "Keep " }) : null,
        el("span", { class: "path", text: image.path }),
        el("div", { class: "facts", text: facts.join(" · ") })));
  }

  function actionButton(label, onClick, extra = "") {
    const button = el("button", { type: "button", class: `button secondary ${extra}`.trim(), text: label });
    button.disabled = !canWrite;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await onClick();
      } catch (err) {
        status.textContent = err.message;
        button.disabled = false;
      }
    });
    return button;
  }

  function groupCard(group) {
    const card = el("article", { class: `dups-group ${group.kind}`, "data-group": group.id });
    const actions = el("div", { class: "dups-actions" });
    const post = (what) => api(`/api/duplicates/${group.id}/${what}`, { method: "POST" }).then(json);
    if (group.kind === "duplicate") {
      actions.append(actionButton(`Quarantine ${group.images.length - 1} others`, async () => {
        const body = await post("quarantine");
        card.classList.add("done");
        actions.replaceChildren(actionButton("Restore", async () => {
          await post("restore");
          status.textContent = `Restored ${body.quarantined.length} pictures.`;
          await reload();
        }, "restore"));
        status.textContent = `Moved ${body.quarantined.length} pictures to the quarantine.`;
        loadQuarantine();
      }, "quarantine"));
    }
    actions.append(actionButton("Dismiss", async () => {
      await post("dismiss");
      card.remove();
      status.textContent = "Group dismissed (it stays hidden).";
    }, "dismiss"));
    card.append(
      el("header", {},
        el("span", { class: "kind", text: group.kind === "burst" ? "Burst" : "Duplicates" }),
        el("span", { class: "reason", text: group.reason }),
        actions),
      el("div", { class: "dups-row" }, ...group.images.map((image) => picture(image, image.id === group.keep))));
    return card;
  }

  async function loadPage(cursor) {
    const body = await json(await api(pageUrl(cursor)));
    for (const group of body.groups) groupsBox.append(groupCard(group));
    shown += body.groups.length;
    next = body.next;
    more.hidden = !next;
    status.textContent = body.total ? `${body.total} groups` + (shown < body.total ? ` (showing ${shown})` : "")
      : "No duplicates found.";
  }

  async function reload() {
    groupsBox.replaceChildren();
    shown = 0;
    status.textContent = "Looking for duplicates…";
    try {
      await loadPage(null);
    } catch (err) {
      status.textContent = err.message;
    }
    loadQuarantine();
  }

  async function loadQuarantine() {
    try {
      const body = await json(await api("/api/quarantine"));
      quarantineList.replaceChildren(...body.entries.map((entry) => el("li", {},
        el("span", { class: "path", text: entry.original_path }),
        actionButton("Restore", async () => {
          await api(`/api/quarantine/${entry.id}/restore`, { method: "POST" }).then(json);
          await reload();
        }, "restore"))));
      quarantineBox.hidden = body.entries.length === 0;
    } catch (err) {
      quarantineBox.hidden = true;
    }
  }

  function csvCell(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  async function exportCsv(event) {
    event.preventDefault();
    const rows = [["group", "kind", "keep", "id", "path", "width", "height", "taken_at", "camera", "evidence", "reason"]];
    let cursor = null;
    do {
      const body = await json(await api(pageUrl(cursor).replace("limit=20", "limit=100")));
      for (const g of body.groups) {
        for (const i of g.images) {
          rows.push([g.id, g.kind, i.id === g.keep ? "yes" : "no", i.id, i.path, i.width, i.height, i.taken_at,
            i.camera, i.evidence, g.reason]);
        }
      }
      cursor = body.next;
    } while (cursor);
    const blob = new Blob([rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n"], { type: "text/csv" });
    const link = el("a", { href: URL.createObjectURL(blob), download: "duplicates.csv" });
    document.body.append(link);
    link.click();
    link.remove();
  }

  more.addEventListener("click", () => loadPage(next).catch((err) => { status.textContent = err.message; }));
  kind.addEventListener("change", reload);
  exportLink.addEventListener("click", (event) => exportCsv(event).catch((err) => { status.textContent = err.message; }));
  reload();
})();
