// The map of the collection (GET /api/map): a canvas of the pictures laid out by their similarity
// graph, clusters outlined. Drag to pan, scroll (or +/−) to zoom; zoomed out it shows dots and the
// clusters' names, zoomed in the pictures' thumbnails (level of detail). Clicking a picture opens
// it; choosing a cluster zooms to it, loads all its points and offers "search inside this cluster".
(function () {
  "use strict";

  const canvas = document.getElementById("map-canvas");
  const ctx = canvas.getContext("2d");
  const list = document.getElementById("cluster-list");
  const detail = document.getElementById("cluster-detail");
  const THUMB_AT = 18; // thumbnails from this size (CSS pixels) on
  const MAX_THUMBS = 400; // thumbnails drawn at once at most
  const state = { points: new Map(), clusters: [], hulls: new Map(), scale: 1, x: 0, y: 0, selected: null,
                  loaded: new Set(), drag: null, thumbs: new Map(), drawn: [] };

  function api(url) {
    return window.fetch(url, { headers: { "X-Loupe-Request": "1" }, credentials: "same-origin" })
      .then((r) => r.ok ? r.json() : r.json().then((e) => Promise.reject(new Error(e.message || r.status))));
  }
  const colour = (c, a = 1) => `hsla(${(c * 137.508) % 360}, 65%, 45%, ${a})`;
  const thumbUrl = (id) => `/images/${id}/thumb`;
  const fileUrl = (id) => `/images/${id}/file`;

  function size() {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    return { w, h, base: Math.max(100, Math.min(w, h) - 110) }; // room for the thumbnails at the edges
  }
  function toScreen(x, y) {
    const s = size().base * state.scale;
    return [x * s + state.x, y * s + state.y];
  }
  function resetView() {
    const { w, h, base } = size();
    state.scale = 1;
    state.x = (w - base) / 2;
    state.y = (h - base) / 2;
  }

  // Convex hull (monotone chain) of a cluster's points, in map coordinates.
  function hull(points) {
    const p = points.map((q) => [q.x, q.y]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    if (p.length < 3) return p;
    const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    const lower = [], upper = [];
    for (const q of p) { while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], q) <= 0) lower.pop(); lower.push(q); }
    for (const q of p.slice().reverse()) { while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], q) <= 0) upper.pop(); upper.push(q); }
    return lower.slice(0, -1).concat(upper.slice(0, -1));
  }
  function rebuildHulls() {
    const by = new Map();
    for (const p of state.points.values()) { if (!by.has(p.cluster)) by.set(p.cluster, []); by.get(p.cluster).push(p); }
    state.hulls = new Map([...by].map(([c, pts]) => [c, hull(pts)]));
  }

  function thumb(id) {
    let img = state.thumbs.get(id);
    if (!img) {
      img = new Image();
      img.onload = () => window.requestAnimationFrame(draw);
      img.src = thumbUrl(id);
      state.thumbs.set(id, img);
    }
    return img;
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const { w, h, base } = size();
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    for (const [c, poly] of state.hulls) {
      if (!poly.length) continue;
      ctx.beginPath();
      poly.forEach(([x, y], i) => { const [sx, sy] = toScreen(x, y); i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy); });
      ctx.closePath();
      ctx.fillStyle = colour(c, state.selected === c ? 0.16 : 0.07);
      ctx.strokeStyle = colour(c, state.selected === c ? 1 : 0.6);
      ctx.lineWidth = state.selected === c ? 2.5 : 1.2;
      ctx.fill(); ctx.stroke();
    }
    const side = Math.min(96, base * state.scale / Math.sqrt(Math.max(state.points.size, 1)) * 0.8);
    const visible = [];
    for (const p of state.points.values()) {
      const [sx, sy] = toScreen(p.x, p.y);
      if (sx > -side && sy > -side && sx < w + side && sy < h + side) visible.push([p, sx, sy]);
    }
    state.drawn = [];
    const thumbs = side >= THUMB_AT && visible.length <= MAX_THUMBS;
    for (const [p, sx, sy] of visible) {
      if (thumbs) {
        const img = thumb(p.id);
        ctx.fillStyle = colour(p.cluster, 0.25);
        ctx.fillRect(sx - side / 2, sy - side / 2, side, side);
        if (img.complete && img.naturalWidth) ctx.drawImage(img, sx - side / 2, sy - side / 2, side, side);
        ctx.strokeStyle = colour(p.cluster); ctx.lineWidth = 1;
        ctx.strokeRect(sx - side / 2, sy - side / 2, side, side);
        state.drawn.push([p, sx, sy, side / 2]);
      } else {
        ctx.fillStyle = colour(p.cluster, 0.85);
        ctx.beginPath(); ctx.arc(sx, sy, 3, 0, 2 * Math.PI); ctx.fill();
        state.drawn.push([p, sx, sy, 5]);
      }
    }
    canvas.dataset.mode = thumbs ? "thumbnails" : "dots"; // what is drawn (read by the browser test)
    canvas.dataset.first = state.drawn.length ? `${state.drawn[0][1]},${state.drawn[0][2]},${state.drawn[0][0].id}` : "";
    if (!thumbs) {
      ctx.font = "600 13px system-ui, sans-serif"; ctx.textAlign = "center";
      for (const c of state.clusters) {
        const [sx, sy] = toScreen(c.x, c.y);
        ctx.fillStyle = "rgba(255,255,255,0.8)";
        const text = `${c.label} (${c.size})`;
        const tw = ctx.measureText(text).width;
        ctx.fillRect(sx - tw / 2 - 3, sy - 11, tw + 6, 16);
        ctx.fillStyle = colour(c.id); ctx.fillText(text, sx, sy + 1);
      }
    }
  }

  function zoomAt(factor, cx, cy) {
    const scale = Math.min(200, Math.max(0.5, state.scale * factor));
    const f = scale / state.scale;
    state.x = cx - (cx - state.x) * f; state.y = cy - (cy - state.y) * f; state.scale = scale;
    window.requestAnimationFrame(draw);
  }

  function hit(mx, my) {
    let best = null, bestD = Infinity;
    for (const [p, sx, sy, r] of state.drawn) {
      const d = Math.max(Math.abs(sx - mx), Math.abs(sy - my));
      if (d <= r && d < bestD) { best = p; bestD = d; }
    }
    return best;
  }

  function openPicture(id) {
    const a = document.createElement("a");
    a.href = fileUrl(id); a.target = "_blank"; a.rel = "noopener";
    document.body.appendChild(a); a.click(); a.remove();
  }

  function pictureLink(id) {
    const a = document.createElement("a");
    a.href = fileUrl(id); a.target = "_blank"; a.rel = "noopener";
    const img = document.createElement("img");
    img.src = thumbUrl(id); img.alt = `picture ${id}`; img.loading = "lazy";
    a.appendChild(img);
    return a;
  }

  function select(clusterId) {
    const c = state.clusters.find((k) => k.id === clusterId);
    if (!c) return;
    state.selected = clusterId;
    for (const b of list.querySelectorAll("button")) b.setAttribute("aria-current", String(Number(b.dataset.cluster) === clusterId));
    detail.hidden = false;
    document.getElementById("cluster-title").textContent = `${c.label} · ${c.size} pictures`;
    const reps = document.getElementById("cluster-reps");
    reps.replaceChildren(...c.representatives.map(pictureLink));
    document.getElementById("cluster-results").replaceChildren();
    const load = state.loaded.has(clusterId) ? Promise.resolve() :
      api(`/api/map?cluster=${clusterId}&limit=20000`).then((body) => {
        for (const p of body.points) state.points.set(p.id, p);
        state.loaded.add(clusterId); rebuildHulls();
      });
    load.then(() => {
      const pts = [...state.points.values()].filter((p) => p.cluster === clusterId);
      if (!pts.length) return;
      const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
      const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), 0.02);
      const { w, h, base } = size();
      state.scale = Math.min(200, 0.8 / span);
      const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
      state.x = w / 2 - cx * base * state.scale; state.y = h / 2 - cy * base * state.scale;
      draw();
    }).catch((err) => { document.getElementById("cluster-results").textContent = `Could not load the cluster: ${err.message}`; });
  }

  function fillList() {
    list.replaceChildren(...state.clusters.map((c) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button"; b.dataset.cluster = String(c.id);
      const name = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "cluster-swatch"; swatch.style.background = colour(c.id);
      name.append(swatch, c.label);
      const count = document.createElement("span"); count.textContent = String(c.size);
      b.append(name, count);
      b.addEventListener("click", () => select(c.id));
      li.appendChild(b);
      return li;
    }));
  }

  document.getElementById("cluster-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = document.getElementById("cluster-q").value.trim();
    const out = document.getElementById("cluster-results");
    if (!q || state.selected === null) return;
    api(`/api/search?q=${encodeURIComponent(q)}&k=24&cluster=${state.selected}`).then((body) => {
      out.replaceChildren(...body.results.map((r) => pictureLink(r.id)));
      if (!body.results.length) out.textContent = "Nothing in this cluster.";
    }).catch((err) => { out.textContent = `Search failed: ${err.message}`; });
  });

  canvas.addEventListener("pointerdown", (e) => {
    state.drag = { x: e.clientX, y: e.clientY, ox: state.x, oy: state.y, moved: false };
    canvas.setPointerCapture(e.pointerId); canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    const d = state.drag;
    if (!d) return;
    if (Math.abs(e.clientX - d.x) + Math.abs(e.clientY - d.y) > 4) d.moved = true;
    state.x = d.ox + e.clientX - d.x; state.y = d.oy + e.clientY - d.y;
    window.requestAnimationFrame(draw);
  });
  canvas.addEventListener("pointerup", (e) => {
    const d = state.drag; state.drag = null; canvas.classList.remove("dragging");
    if (!d || d.moved) return;
    const r = canvas.getBoundingClientRect();
    const p = hit(e.clientX - r.left, e.clientY - r.top);
    if (!p) return;
    if (state.selected !== p.cluster) select(p.cluster); else openPicture(p.id);
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  const centre = () => { const { w, h } = size(); return [w / 2, h / 2]; };
  document.getElementById("zoom-in").addEventListener("click", () => zoomAt(1.5, ...centre()));
  document.getElementById("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, ...centre()));
  document.getElementById("zoom-reset").addEventListener("click", () => { resetView(); draw(); });
  window.addEventListener("resize", () => window.requestAnimationFrame(draw));

  api("/api/map").then((body) => {
    for (const p of body.points) state.points.set(p.id, p);
    state.clusters = body.clusters;
    document.getElementById("map-empty").hidden = body.points.length > 0;
    document.getElementById("map-count").textContent = `${body.total} pictures · ${body.clusters.length} clusters`;
    rebuildHulls(); fillList(); resetView(); draw();
    document.body.dataset.mapReady = "true";
  }).catch((err) => {
    const empty = document.getElementById("map-empty");
    empty.hidden = false; empty.textContent = `The map could not be loaded: ${err.message}`;
  });
})();
