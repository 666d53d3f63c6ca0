// Loupe's search page: text search as you type, photo search by drop / paste / picker,
// a paged results grid, and a detail view with "more like this" and "generate similar".
"use strict";

(() => {
  const PAGE = 24;
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), file: $("file"), pick: $("pick"), pick2: $("pick2"),
    dropzone: $("dropzone"), query: $("query"), queryImage: $("query-image"), queryTitle: $("query-title"),
    queryMeta: $("query-meta"), clearQuery: $("clear-query"), state: $("state"), results: $("results"),
    more: $("more"), moreButton: $("more-button"), detail: $("detail"), detailImage: $("detail-image"),
    detailTitle: $("detail-title"), detailMeta: $("detail-meta"), detailNote: $("detail-note"),
    moreLike: $("more-like-this"), generate: $("generate-similar"), openOriginal: $("open-original"),
    detailClose: $("detail-close"), verdict: $("verdict"), generateFromQuery: $("generate-from-query"),
    generation: $("generation"), genSource: $("gen-source"), genProgress: $("gen-progress"),
    genCancel: $("gen-cancel"), genClose: $("gen-close"), genStatus: $("gen-status"),
    genBackend: $("gen-backend"), genGrid: $("gen-grid"), restoration: $("restoration"),
    reconstruction: $("reconstruction"), reconstructionImage: $("reconstruction-image"),
    compare: $("compare"), compareQuery: $("compare-query"), compareMatch: $("compare-match"),
    compareOverlay: $("compare-overlay"), compareSummary: $("compare-summary"),
  };
  const SVG = "http://www.w3.org/2000/svg";
  const GENERATE = { n: 4, strength: 0.6, steps: 50 };
  // Generating and adding pictures need the API token when the server has one: without a
  // session that may write, those buttons are not offered (the footer links to the sign-in).
  const CAN_WRITE = document.body.dataset.canWrite !== "false";
  // "Generate similar" needs the token and a generator: without either it is not offered.
  const CAN_GENERATE = CAN_WRITE && document.body.dataset.canGenerate === "true";
  // Where the app is served from ("/", or the sub-path a reverse proxy serves it under,
  // LOUPE_URL_PREFIX): every URL the page builds itself goes through apiUrl().
  const ROOT = document.body.dataset.root || "/";
  const PLACEHOLDER = document.body.dataset.placeholder || apiUrl("static/missing.svg");
  // Errors whose server message is written for the command line: the page's own words instead.
  const PAGE_MESSAGES = {
    not_indexed: "Nothing is indexed yet: the guides (linked at the bottom of the page) say how to add pictures.",
    model_mismatch: "This server's model does not match the index: the guides (linked below) say how to change models.",
    weights_unavailable: "The model's weights are not available on this server: see the guides linked below.",
  };
  const POLL_MS = 400;
  const MATCH_LABELS = { exact: "Exact copy", "near-duplicate": "Near-duplicate" };
  const STAGE_NAMES = {
    outpaint: "outpainting", blur: "blur", pixel: "diffusion denoising", "pixel-ddim": "diffusion denoising (DDIM)",
    embedding: "embedding reconstruction", qe: "query expansion",
  };

  // The current query: {kind: "text", text} | {kind: "upload", file, url} | {kind: "similar", id, thumb, name}
  let query = null;
  let offset = 0;
  let total = 0;
  let loading = false;
  let generation = 0; // bumps on every new query, so late answers to old ones are ignored
  let controller = null;
  let detailId = null;
  let shown = new Map(); // id → result of the current query's pages (the compare view needs them)
  let debounce = null;
  let genRun = 0; // bumps on every generation started or closed, so old polls stop
  let genJob = null;
  let nextCursor = null; // the `next` of the last page loaded: the following page continues after it
  // The filters and order every search carries (the filter bar; docs/library.md).
  const library = { folder: [], taken_after: "", taken_before: "", format: "", min_width: "", camera: "",
                    sort: "relevance" };
  const ORDER_TEXT = { relevance: "best match first", "-taken": "newest first", taken: "oldest first",
                       size: "largest first" };

  // A URL of this app from its path ("api/search" or "/api/search"), under ROOT; a URL the
  // server built (it already starts with ROOT) or an absolute one is left as it is.
  function apiUrl(path) {
    if (/^[a-z]+:/i.test(path) || (ROOT !== "/" && path.startsWith(ROOT))) return path;
    return ROOT + path.replace(/^\/+/, "");
  }

  // Every API call says it comes from this page: the server refuses requests that change
  // something unless they come from its own origin, and a cross-site form cannot set a header.
  function api(url, init = {}) {
    const headers = new Headers(init.headers || {});
    headers.set("X-Loupe-Request", "1");
    return window.fetch(apiUrl(url), { ...init, headers, credentials: "same-origin" });
  }

  // A picture whose file cannot be served (moved, changed, unreadable) shows a placeholder
  // instead of a broken image; an element reused for another picture clears the mark on load.
  function withPlaceholder(img) {
    const placeholder = new URL(PLACEHOLDER, document.baseURI).href;
    img.addEventListener("error", () => {
      if (!img.getAttribute("src") || img.src === placeholder) return;
      img.classList.add("missing");
      img.title = "This picture's file is not available (moved, changed or unreadable)";
      img.src = placeholder;
    });
    img.addEventListener("load", () => {
      if (img.src !== placeholder && img.classList.contains("missing")) {
        img.classList.remove("missing");
        img.removeAttribute("title");
      }
    });
    return img;
  }

  function setState(text, kind = "") {
    els.state.textContent = text;
    els.state.className = "state" + (kind ? " " + kind : "");
  }

  function baseName(path) {
    return path.split(/[\\/]/).pop();
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return PAGE_MESSAGES[body.error] || body.message || body.error || response.statusText;
    } catch (_) {
      return `${response.status} ${response.statusText}`;
    }
  }

  function request(q, from) {
    const params = new URLSearchParams({ k: PAGE, offset: from });
    libraryParams(params, from);
    if (!from) showTerms(null); // until the answer says how the words were read
    if (q.kind === "combined") return requestCombined(q, params);
    if (q.kind === "text") {
      params.set("q", q.text);
      return api(`/api/search?${params}`, { signal: controller.signal });
    }
    if (q.kind === "upload") {
      const form = new FormData();
      form.append("image", q.file, q.file.name || "pasted-image");
      return api(`/api/search/image?${params}`, { method: "POST", body: form, signal: controller.signal });
    }
    return api(`/api/search/image?${params}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: q.id }),
      signal: controller.signal,
    });
  }

  async function run(q) {
    generation += 1;
    if (controller) controller.abort();
    controller = new AbortController();
    query = q;
    offset = 0;
    total = 0;
    nextCursor = null;
    els.results.replaceChildren();
    shown = new Map();
    els.more.hidden = true;
    showVerdict(null);
    if (!q) {
      setState("Type a few words or drop a photo to search.");
      return;
    }
    await loadPage();
  }

  async function loadPage() {
    if (!query || loading) return;
    const mine = generation;
    loading = true;
    setState(offset ? "Loading more…" : "Searching…", "loading");
    try {
      const response = await request(query, offset);
      if (mine !== generation) return;
      if (!response.ok) {
        setState(await errorMessage(response), "error");
        return;
      }
      const page = await response.json();
      if (mine !== generation) return;
      total = page.total;
      nextCursor = page.next || null;
      if (offset === 0 && query.kind !== "text") showVerdict(page);
      if (offset === 0 && query.kind === "upload") showRestoration(page.restoration);
      if (offset === 0) showTerms(page.combined || null);
      render(page.results, offset === 0);
      offset += page.results.length;
      const more = Boolean(page.next);
      els.more.hidden = !more;
      if (offset === 0) {
        setState(query.kind === "text" ? `No pictures match “${query.text}”.` : "No similar pictures found.");
      } else {
        setState(`Showing ${offset} of ${total} pictures, ${orderText()} (${Math.round(page.took_ms)} ms).`);
      }
    } catch (err) {
      if (err.name !== "AbortError" && mine === generation) {
        setState("Loupe could not be reached. Check that the server is running, then try again.", "error");
      }
    } finally {
      if (mine === generation) loading = false;
    }
  }

  // -- filters, order and cursor ------------------------------------------------------------------
  // Adds the filter bar's filters and order to a search's parameters; a later page continues
  // from the previous page's cursor rather than an offset.
  function libraryParams(params, from) {
    library.folder.forEach((folder) => params.append("folder", folder));
    ["taken_after", "taken_before", "format", "min_width", "camera"].forEach((name) => {
      if (library[name]) params.set(name, library[name]);
    });
    if (library.sort !== "relevance") params.set("sort", library.sort);
    if (from > 0 && nextCursor) {
      params.delete("offset");
      params.set("cursor", nextCursor);
    }
  }

  function orderText() {
    return ORDER_TEXT[library.sort] || "best match first";
  }

  function rerun() {
    if (query) run(query);
  }

  // Each active filter as a chip; its × removes it.
  function renderChips() {
    const chips = [];
    const chip = (text, remove) => {
      const item = document.createElement("li");
      item.className = "chip";
      item.textContent = text;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chip-remove";
      button.setAttribute("aria-label", `Remove filter: ${text}`);
      button.textContent = "×";
      button.addEventListener("click", () => { remove(); syncFilterInputs(); renderChips(); rerun(); });
      item.append(button);
      chips.push(item);
    };
    library.folder.forEach((folder) => chip(`in ${folder}`, () => {
      library.folder = library.folder.filter((f) => f !== folder);
    }));
    if (library.taken_after) chip(`from ${library.taken_after}`, () => { library.taken_after = ""; });
    if (library.taken_before) chip(`to ${library.taken_before}`, () => { library.taken_before = ""; });
    if (library.format) chip(`format ${library.format.toUpperCase()}`, () => { library.format = ""; });
    if (library.min_width) chip(`at least ${library.min_width} px wide`, () => { library.min_width = ""; });
    if (library.camera) chip(`camera “${library.camera}”`, () => { library.camera = ""; });
    $("chips").replaceChildren(...chips);
  }

  function syncFilterInputs() {
    $("taken-after").value = library.taken_after;
    $("taken-before").value = library.taken_before;
    $("format-filter").value = library.format;
    $("min-width").value = library.min_width;
    $("camera-filter").value = library.camera;
    $("sort").value = library.sort;
  }

  // The folder picker: the indexed folders (GET /api/folders), narrowed as one types.
  async function loadFolders() {
    const params = new URLSearchParams({ limit: 50 });
    const text = $("folder-q").value.trim();
    if (text) params.set("q", text);
    const list = $("folder-list");
    try {
      const response = await api(`/api/folders?${params}`);
      if (!response.ok) {
        list.replaceChildren(Object.assign(document.createElement("li"), { textContent: await errorMessage(response) }));
        return;
      }
      const body = await response.json();
      list.replaceChildren(...body.folders.map((folder) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "folder-choice";
        button.dataset.path = folder.path;
        button.textContent = `${folder.path} (${folder.count})`;
        button.addEventListener("click", () => {
          if (!library.folder.includes(folder.path)) library.folder.push(folder.path);
          toggleFolderPicker(false);
          renderChips();
          rerun();
        });
        item.append(button);
        return item;
      }));
      if (!body.folders.length) list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "No folder matches." }));
    } catch (_) {
      list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "Folders could not be loaded." }));
    }
  }

  function toggleFolderPicker(open) {
    $("folder-picker").hidden = !open;
    $("folder-button").setAttribute("aria-expanded", String(open));
    if (open) {
      loadFolders();
      $("folder-q").focus();
    }
  }

  function setupFilters() {
    const bind = (id, name, event = "change") => $(id).addEventListener(event, () => {
      library[name] = $(id).value.trim();
      renderChips();
      rerun();
    });
    bind("taken-after", "taken_after");
    bind("taken-before", "taken_before");
    bind("format-filter", "format");
    bind("min-width", "min_width");
    bind("camera-filter", "camera");
    bind("sort", "sort");
    $("folder-button").addEventListener("click", () => toggleFolderPicker($("folder-picker").hidden));
    let folderDebounce = null;
    $("folder-q").addEventListener("input", () => {
      clearTimeout(folderDebounce);
      folderDebounce = setTimeout(loadFolders, 200);
    });
    $("folder-q").addEventListener("keydown", (event) => {
      if (event.key === "Escape") toggleFolderPicker(false);
    });
  }

  // What an image search found: a copy of the picture, or plainly none.
  function showVerdict(page) {
    if (!page || page.combined || typeof page.copy_found !== "boolean" || !page.results.length) {
      els.verdict.hidden = true;
      return;
    }
    const copies = page.results.filter((r) => r.match in MATCH_LABELS).length;
    const verified = page.results.find((r) => r.match in MATCH_LABELS && r.verification);
    const found = `${copies} ${copies === 1 ? "copy" : "copies"} found (exact or altered), shown first.`;
    els.verdict.className = "verdict " + (page.copy_found ? "found" : "none");
    els.verdict.textContent = !page.copy_found
      ? "The collection holds no copy of this picture. These are the most similar pictures."
      : verified ? `This picture is in the collection. ${verified.verification.summary} (verified: ` +
        `${verified.verification.inliers} matching points). ${found}`
        : `This picture is in the collection: ${found}`;
    els.verdict.hidden = false;
  }

  // What the query restoration detected and did, and the reconstructed query beside the original.
  function showRestoration(report) {
    els.restoration.hidden = !report;
    els.reconstruction.hidden = !(report && report.reconstruction);
    if (!report) return;
    const found = [];
    if (report.detected.includes("noise")) found.push(`noise (σ ≈ ${report.noise.level.toFixed(1)} levels)`);
    if (report.detected.includes("crop")) found.push("a crop");
    if (report.detected.includes("unmatched")) {
      found.push(report.verified === false ? "no verified copy" : "no near-duplicate in the plain lookup");
    }
    const ran = report.applied.map((s) => STAGE_NAMES[s] || s);
    const skipped = Object.entries(report.skipped || {}).map(([s, why]) => `${STAGE_NAMES[s] || s} skipped: ${why}`);
    els.restoration.textContent = (found.length ? `Detected ${found.join(" and ")}. ` : "No damage detected. ") +
      (ran.length ? `Reconstructed with ${ran.join(", ")} (${Math.round(report.ms)} ms); ` +
        (report.verified === null || report.verified === undefined
          ? "results from both queries are merged, your picture's best match first."
          : "what the reconstruction found ranks first only if it verifies against your picture.")
        : "Searched as given.") + (skipped.length ? ` (${skipped.join("; ")})` : "");
    if (report.reconstruction) els.reconstructionImage.src = report.reconstruction;
    else els.reconstructionImage.removeAttribute("src");
  }

  // A thumbnail; when a region of the picture matched, the whole picture is shown (letterboxed)
  // with that region outlined.
  function thumbnail(result) {
    const img = withPlaceholder(document.createElement("img"));
    img.src = result.thumb_url;
    img.alt = baseName(result.path);
    img.loading = "lazy";
    img.width = 320;
    img.height = 240;
    if (result.verification && result.width && result.height) return outlined(result, img);
    if (!result.region || !result.width || !result.height) return img;
    const [x, y, w, h] = result.region;
    const box = document.createElement("span");
    box.className = result.match in MATCH_LABELS ? "region copy" : "region";
    box.title = `matched region ${w}×${h} at (${x}, ${y})`;
    Object.assign(box.style, {
      left: `${(100 * x) / result.width}%`, top: `${(100 * y) / result.height}%`,
      width: `${(100 * w) / result.width}%`, height: `${(100 * h) / result.height}%`,
    });
    return letterboxed(result, img, box);
  }

  // The whole picture (letterboxed) with the verified outline of the query drawn over it.
  function outlined(result, img) {
    const svg = outlineSvg(result);
    svg.classList.add("outline");
    return letterboxed(result, img, svg);
  }

  // The picture fitted into the result's frame at its own aspect ratio, `overlay` drawn over it.
  function letterboxed(result, img, overlay) {
    const frame = document.createElement("span");
    frame.className = "frame";
    const fit = document.createElement("span");
    fit.className = "fit";
    fit.style.aspectRatio = `${result.width} / ${result.height}`;
    fit.style[result.width / result.height >= 4 / 3 ? "width" : "height"] = "100%";
    fit.append(img, overlay);
    frame.append(fit);
    return frame;
  }

  function outlineSvg(result) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const polygon = document.createElementNS(SVG, "polygon");
    polygon.setAttribute("points", result.verification.outline.map(([x, y]) => `${x},${y}`).join(" "));
    const title = document.createElementNS(SVG, "title");
    title.textContent = result.verification.summary;
    polygon.append(title);
    svg.append(polygon);
    return svg;
  }

  // Query and match side by side: the match with the verified outline, and the query warped
  // onto it (an affine map of its corners to the outline's) when the toggle is on.
  function showCompare(result) {
    const queryImage = els.queryImage;
    const usable = result && result.verification && query && query.kind === "upload" && queryImage.naturalWidth;
    els.compare.hidden = !usable;
    els.detailImage.hidden = Boolean(usable);
    if (!usable) return;
    els.compareQuery.src = queryImage.src;
    const svg = outlineSvg(result);
    const image = document.createElementNS(SVG, "image");
    image.setAttribute("href", result.preview_url || result.file_url);
    image.setAttribute("width", result.width);
    image.setAttribute("height", result.height);
    const [p0, p1, , p3] = result.verification.outline;
    const qw = queryImage.naturalWidth, qh = queryImage.naturalHeight;
    const warped = document.createElementNS(SVG, "image");
    warped.setAttribute("class", "warped");
    warped.setAttribute("href", queryImage.src);
    warped.setAttribute("width", qw);
    warped.setAttribute("height", qh);
    warped.setAttribute("transform", `matrix(${(p1[0] - p0[0]) / qw} ${(p1[1] - p0[1]) / qw} ` +
      `${(p3[0] - p0[0]) / qh} ${(p3[1] - p0[1]) / qh} ${p0[0]} ${p0[1]})`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.classList.add("outline");
    svg.prepend(image);
    svg.insertBefore(warped, svg.lastChild);
    els.compareMatch.replaceChildren(svg);
    els.compareMatch.classList.toggle("overlay", els.compareOverlay.checked);
    const v = result.verification;
    els.compareSummary.textContent = `${v.summary}. ${v.inliers} matching points; scale ${v.scale.toFixed(2)}, ` +
      `rotation ${v.rotation_deg.toFixed(1)}°${v.mirrored ? ", mirrored" : ""}.`;
  }

  function render(results, first) {
    const fragment = document.createDocumentFragment();
    results.forEach((result, i) => {
      const item = document.createElement("li");
      const card = document.createElement("button");
      card.type = "button";
      card.className = "card" + (first && i === 0 ? " first" : "");
      card.dataset.id = result.id;
      const label = MATCH_LABELS[result.match];
      card.setAttribute("aria-label",
        `${baseName(result.path)}, score ${result.score.toFixed(3)}${label ? ", " + label.toLowerCase() : ""}` +
        `${result.region ? ", matched in a region" : ""}` +
        `${result.found_by === "restored" ? ", found by the reconstructed query" : ""}`);
      const caption = document.createElement("span");
      caption.className = "caption";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = baseName(result.path);
      name.title = result.path;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = result.score.toFixed(3);
      caption.append(name, score);
      if (result.found_by === "restored") {
        const via = document.createElement("span");
        via.className = "via";
        via.textContent = "via reconstruction";
        via.title = "Only the reconstructed query found this picture";
        caption.append(via);
      }
      if (result.verification) {
        const verified = document.createElement("span");
        verified.className = "verified";
        verified.textContent = result.verification.summary;
        caption.classList.add("has-verified");
        caption.append(verified);
      }
      if (label) {
        const badge = document.createElement("span");
        badge.className = `badge ${result.match}`;
        badge.textContent = label;
        card.append(badge);
      }
      card.append(thumbnail(result), caption);
      shown.set(result.id, result);
      card.addEventListener("click", () => openDetail(result.id));
      item.append(card);
      fragment.append(item);
    });
    els.results.append(fragment);
  }

  function showQueryPanel(src, title, meta, canGenerate = false) {
    els.generateFromQuery.hidden = !(canGenerate && CAN_GENERATE);
    els.queryImage.src = src;
    els.queryTitle.textContent = title;
    els.queryMeta.textContent = meta;
    els.query.hidden = false;
  }

  function clearQueryPanel() {
    const photo = photoOf(query);
    if (photo && photo.kind === "upload") URL.revokeObjectURL(photo.url);
    showRestoration(null);
    els.query.hidden = true;
    els.queryImage.removeAttribute("src");
  }

  function searchText(text) {
    clearQueryPanel();
    const trimmed = text.trim();
    const url = new URL(window.location);
    if (trimmed) url.searchParams.set("q", trimmed); else url.searchParams.delete("q");
    history.replaceState(null, "", url);
    run(trimmed ? { kind: "text", text: trimmed } : null);
  }

  function searchFile(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      setState(`“${file.name}” is not an image. Drop a JPEG, PNG, WebP, GIF, BMP or TIFF file.`, "error");
      return;
    }
    clearQueryPanel();
    const url = URL.createObjectURL(file);
    els.q.value = "";
    showQueryPanel(url, file.name || "Pasted image", `${Math.round(file.size / 1024)} KB · searching for this picture`, true);
    run({ kind: "upload", file, url });
  }

  function searchSimilar(id, thumb, name) {
    clearQueryPanel();
    els.q.value = "";
    showQueryPanel(thumb, `More like ${name}`, "pictures similar to this one");
    run({ kind: "similar", id, thumb, name });
  }

  async function openDetail(id) {
    detailId = id;
    els.detailNote.textContent = "";
    els.detailMeta.replaceChildren();
    els.detailTitle.textContent = "Loading…";
    els.detailImage.removeAttribute("src");
    showCompare(shown.get(id));
    if (!els.detail.open) els.detail.showModal();
    const response = await api(`/api/images/${id}`);
    if (detailId !== id) return;
    if (!response.ok) {
      els.detailTitle.textContent = "Not available";
      els.detailNote.textContent = await errorMessage(response);
      return;
    }
    const image = await response.json();
    els.detailTitle.textContent = baseName(image.path);
    els.detailImage.src = image.preview_url || image.file_url; // a bounded JPEG: the original is a link
    els.detailImage.alt = baseName(image.path);
    els.openOriginal.href = image.file_url;
    const facts = [
      ["Path", image.path],
      ["Size", image.width && image.height ? `${image.width} × ${image.height} px` : "unknown"],
      ["Format", image.format || "unknown"],
      ["File", `${(image.size_bytes / 1024).toFixed(0)} KB`],
      ["Indexed", image.indexed_at ? new Date(image.indexed_at).toLocaleString() : "—"],
      ["Id", String(image.id)],
    ];
    if (image.missing) facts.push(["Note", "the file has vanished from disk"]);
    for (const [term, value] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      els.detailMeta.append(dt, dd);
    }
    els.moreLike.dataset.thumb = image.thumb_url;
    els.moreLike.dataset.name = baseName(image.path);
    els.moreLike.focus();
  }

  // -- a photo and words together (combined queries: docs/queries.md) --------------------------
  // The photo (an upload, or "more like this") stays until Clear; words typed while it is shown
  // search with it ("at night", "-people", "2:beach"); emptying the words searches the photo
  // alone again (the copy check). Without a photo, words are a text search as before.
  function photoOf(q) {
    if (!q) return null;
    if (q.kind === "combined") return q.base;
    return q.kind === "upload" || q.kind === "similar" ? q : null;
  }

  function requestCombined(q, params) {
    if (q.base.kind === "upload") {
      const form = new FormData();
      form.append("image", q.base.file, q.base.file.name || "pasted-image");
      form.append("q", q.text);
      return api(`/api/search/image?${params}`, { method: "POST", body: form, signal: controller.signal });
    }
    return api(`/api/search/image?${params}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: q.base.id, q: q.text }),
      signal: controller.signal,
    });
  }

  function searchWords(text) {
    const photo = photoOf(query);
    if (!photo) return searchText(text);
    const trimmed = text.trim();
    els.queryMeta.textContent = trimmed ? `this picture with “${trimmed}”: similar pictures, not copies`
      : photo.kind === "upload" ? "searching for this picture" : "pictures similar to this one";
    run(trimmed ? { kind: "combined", base: photo, text: trimmed } : photo);
  }

  // How the server read the words: "sunset ×2 · not people", after the photo when there is one.
  function showTerms(combined) {
    const terms = $("terms");
    if (!terms) return;
    terms.hidden = !combined;
    if (!combined) return;
    const words = combined.terms.map((t) => {
      const times = Math.abs(t.weight) === 1 ? "" : ` ×${Math.abs(t.weight)}`;
      return `${t.weight < 0 ? "not " : ""}${t.text}${times}`;
    });
    if (combined.image_weight !== undefined) words.unshift("this photo");
    terms.textContent = `Searching for: ${words.join(" · ")}`;
  }

  // -- generate similar ----------------------------------------------------------------------
  function generateFromDetail() {
    els.detail.close();
    const init = {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: detailId, ...GENERATE, wait: 0 }),
    };
    generate(init, els.moreLike.dataset.name || `picture ${detailId}`);
  }

  function generateFromQuery() {
    const photo = photoOf(query);
    if (!photo || photo.kind !== "upload") return;
    const form = new FormData();
    form.append("image", photo.file, photo.file.name || "pasted-image");
    for (const [key, value] of Object.entries({ ...GENERATE, wait: 0 })) form.append(key, String(value));
    generate({ method: "POST", body: form }, photo.file.name || "your picture");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function generate(init, sourceName) {
    genRun += 1;
    const mine = genRun;
    genJob = null;
    els.generation.hidden = false;
    els.genSource.textContent = sourceName;
    els.genGrid.replaceChildren();
    els.genBackend.textContent = "";
    els.genProgress.hidden = false;
    els.genProgress.value = 0;
    els.genCancel.hidden = false;
    els.genCancel.disabled = false;
    els.genStatus.className = "note";
    els.genStatus.textContent = "Starting…";
    els.generation.scrollIntoView({ block: "nearest" });
    try {
      let response = await api("/api/generate", init);
      if (mine !== genRun) return;
      if (!response.ok) return endGeneration(await errorMessage(response), true);
      let job = await response.json();
      genJob = job.id;
      while (job.state === "queued" || job.state === "running") {
        els.genProgress.value = job.progress;
        els.genStatus.textContent = job.state === "queued"
          ? "Waiting for the generator…" : `Generating ${job.parameters.n} variations… ${Math.round(100 * job.progress)}%`;
        await sleep(POLL_MS);
        if (mine !== genRun) return;
        response = await api(`/api/jobs/${job.id}`);
        if (mine !== genRun) return;
        if (!response.ok) return endGeneration(await errorMessage(response), true);
        job = await response.json();
      }
      showGeneration(job);
    } catch (err) {
      if (mine === genRun) endGeneration("Loupe could not be reached. Check that the server is running.", true);
    }
  }

  function endGeneration(message, error = false) {
    els.genProgress.hidden = true;
    els.genCancel.hidden = true;
    els.genStatus.className = "note" + (error ? " error" : "");
    els.genStatus.textContent = message;
  }

  function showGeneration(job) {
    if (job.backend) {
      els.genBackend.textContent = job.backend.note +
        (job.backend.low_resolution ? " — low resolution." : ".");
    }
    if (job.state === "cancelled") return endGeneration("Cancelled.");
    if (job.state !== "finished") return endGeneration(job.error || `Generation ${job.state}.`, true);
    endGeneration(`${job.images.length} variations in ${job.seconds.toFixed(1)} s (seed ${job.parameters.seed}, ` +
      `strength ${job.parameters.strength}). Generated pictures are not added to the collection.`);
    const fragment = document.createDocumentFragment();
    job.images.forEach((image, i) => {
      const item = document.createElement("li");
      item.className = "variation";
      const picture = document.createElement("img");
      picture.src = image.url;
      picture.alt = `Variation ${i + 1} (seed ${image.seed})`;
      picture.className = job.backend && job.backend.low_resolution ? "generated pixelated" : "generated";
      const label = document.createElement("p");
      label.className = "note";
      label.textContent = "Nearest in the collection:";
      const near = document.createElement("div");
      near.className = "neighbours";
      for (const result of image.neighbours) {
        const link = document.createElement("button");
        link.type = "button";
        link.className = "neighbour";
        link.dataset.id = result.id;
        link.title = `${baseName(result.path)} · ${result.score.toFixed(3)}`;
        link.setAttribute("aria-label", `${baseName(result.path)}, score ${result.score.toFixed(3)}`);
        const thumb = withPlaceholder(document.createElement("img"));
        thumb.src = result.thumb_url;
        thumb.alt = "";
        thumb.loading = "lazy";
        link.append(thumb);
        link.addEventListener("click", () => openDetail(result.id));
        near.append(link);
      }
      const add = document.createElement("button");
      add.type = "button";
      add.className = "link add-generated";
      add.textContent = "Add to the collection";
      add.addEventListener("click", async () => {
        add.disabled = true;
        const response = await api(`/api/jobs/${job.id}/images/${i}/add`, { method: "POST" });
        add.textContent = response.ok ? `Added (id ${(await response.json()).id})` : await errorMessage(response);
      });
      item.append(picture, label, near);
      if (CAN_WRITE) item.append(add);
      fragment.append(item);
    });
    els.genGrid.append(fragment);
  }

  async function cancelGeneration() {
    if (!genJob) return;
    els.genCancel.disabled = true;
    els.genStatus.textContent = "Cancelling…";
    await api(`/api/jobs/${genJob}/cancel`, { method: "POST" });
  }

  function closeGeneration() {
    if (genJob && !els.genCancel.hidden) cancelGeneration();
    genRun += 1;
    els.generation.hidden = true;
    els.genGrid.replaceChildren();
  }

  // -- a bulk indexing job this server is running ----------------------------------------------
  async function watchIndexJob(section) {
    const id = section.dataset.job;
    const status = $("index-job-status");
    const progress = $("index-job-progress");
    const cancel = $("index-job-cancel");
    if (cancel) {
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        status.textContent = `Cancelling indexing job #${id} after its current batch…`;
        const response = await api(`/api/jobs/${id}/cancel`, { method: "POST" });
        if (!response.ok) status.textContent = await errorMessage(response);
      });
    }
    for (;;) {
      const response = await api(`/api/jobs/${id}`);
      if (!response.ok) return;
      const job = await response.json();
      progress.value = job.progress;
      if (job.state !== "running") {
        status.textContent = `Indexing job #${id} ${job.state}: ${job.added} added, ${job.failed} failed.`;
        progress.hidden = true;
        if (cancel) cancel.hidden = true;
        return;
      }
      if (!cancel || !cancel.disabled) {
        status.textContent = `Indexing job #${id}: ${job.files_seen} files, ${Math.round(100 * job.progress)}% done.`;
      }
      await sleep(1000);
    }
  }

  // -- wiring ----------------------------------------------------------------------------------
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(debounce);
    searchWords(els.q.value);
  });
  els.q.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => searchWords(els.q.value), 250);
  });
  const pickFile = () => els.file.click();
  els.pick.addEventListener("click", pickFile);
  els.pick2.addEventListener("click", pickFile);
  els.file.addEventListener("change", () => {
    searchFile(els.file.files[0]);
    els.file.value = "";
  });
  els.dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pickFile();
    }
  });
  let dragDepth = 0;
  window.addEventListener("dragenter", (event) => {
    if (event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files")) {
      dragDepth += 1;
      document.body.classList.add("dragging");
    }
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
    if (item) {
      event.preventDefault();
      searchFile(item.getAsFile());
    }
  });
  els.clearQuery.addEventListener("click", () => {
    clearQueryPanel();
    run(null);
    els.q.focus();
  });
  els.moreButton.addEventListener("click", loadPage);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !els.more.hidden) loadPage();
    }, { rootMargin: "400px" }).observe(els.more);
  }
  els.moreLike.addEventListener("click", () => {
    const { thumb, name } = els.moreLike.dataset;
    els.detail.close();
    searchSimilar(detailId, thumb, name);
  });
  els.generate.addEventListener("click", generateFromDetail);
  els.generateFromQuery.addEventListener("click", generateFromQuery);
  els.genCancel.addEventListener("click", cancelGeneration);
  els.genClose.addEventListener("click", closeGeneration);
  els.detailClose.addEventListener("click", () => els.detail.close());
  els.compareOverlay.addEventListener("change", () => {
    els.compareMatch.classList.toggle("overlay", els.compareOverlay.checked);
  });
  els.detail.addEventListener("click", (event) => {
    if (event.target === els.detail) els.detail.close(); // a click on the backdrop
  });

  els.generate.hidden = !CAN_GENERATE;
  withPlaceholder(els.detailImage);
  withPlaceholder(els.queryImage);
  setupFilters();
  if ($("index-job")) watchIndexJob($("index-job"));

  const initial = new URL(window.location).searchParams.get("q");
  if (initial) {
    els.q.value = initial;
    searchText(initial);
  }
})();
