// Renkei map viewer: every OGC API - Features collection of the hub on one map.
// Data comes from /ogc (GeoJSON, CRS84); MapLibre GL JS is served from /viewer/vendor.
"use strict";

(function () {
  const TEXT = {
    ja: {
      title: "Renkei 地図ビューアー",
      layers: "レイヤー",
      loading: "読み込み中…",
      loaded: (n, c) => `${c} レイヤー、${n} 件の地物を表示しています`,
      empty: "表示できるコレクションがありません",
      failed: "データを読み込めませんでした: ",
      hint: "地物をクリックすると属性が表示されます。",
      other: "English",
    },
    en: {
      title: "Renkei map viewer",
      layers: "Layers",
      loading: "Loading…",
      loaded: (n, c) => `Showing ${n} features in ${c} layers`,
      empty: "No collections to show",
      failed: "Could not load the data: ",
      hint: "Click a feature to see its attributes.",
      other: "日本語",
    },
  };
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080",
    "#f032e6", "#9a6324", "#800000", "#000075", "#808000", "#46f0f0"];

  const params = new URLSearchParams(location.search);
  let lang = params.get("lang") || ((navigator.language || "ja").startsWith("ja") ? "ja" : "en");
  const state = { ready: false, collections: 0, features: 0, layerIds: [], titles: {}, error: null };
  window.renkeiViewer = state;

  const $ = (id) => document.getElementById(id);
  const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function label() {
    const t = TEXT[lang];
    document.documentElement.lang = lang;
    $("title").textContent = t.title;
    $("layers-title").textContent = t.layers;
    $("hint").textContent = t.hint;
    $("lang").textContent = t.other;
  }

  function baseStyle(config) {
    const style = {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#eef1f4" } }],
    };
    if (config.tiles) {
      style.sources.basemap = {
        type: "raster", tiles: [config.tiles], tileSize: 256, attribution: config.attribution || "",
      };
      style.layers.push({ id: "basemap", type: "raster", source: "basemap" });
    }
    return style;
  }

  async function getJSON(url, signal) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, signal });
    if (!response.ok) throw new Error(`${response.status} ${url}`);
    return response.json();
  }

  async function features(collection, ogc, max, signal) {
    const out = [];
    let url = `${ogc}/collections/${encodeURIComponent(collection.id)}/items?f=json&limit=1000&lang=${lang}`;
    while (url && out.length < max) {
      const page = await getJSON(url, signal);
      out.push(...page.features);
      const next = (page.links || []).find((l) => l.rel === "next");
      url = next ? next.href : null;
    }
    return out;
  }

  const POINTS = ["literal", ["Point", "MultiPoint"]];
  const AREAS = ["literal", ["Polygon", "MultiPolygon"]];

  // The first layer of the map drawn with one of these types, to insert below it.
  function firstOf(map, types) {
    const found = map.getStyle().layers.find((l) => types.includes(l.type));
    return found ? found.id : undefined;
  }

  // Every collection's areas go below every collection's lines, and those below every
  // point: a district polygon (translucent fill) never covers, and tints, a facility.
  function addLayers(map, id, color) {
    const ids = [`${id}-fill`, `${id}-line`, `${id}-point`];
    map.addLayer({ id: ids[0], type: "fill", source: id,
      filter: ["in", ["geometry-type"], AREAS],
      paint: { "fill-color": color, "fill-opacity": 0.25 } }, firstOf(map, ["line", "circle"]));
    map.addLayer({ id: ids[1], type: "line", source: id,
      filter: ["!", ["in", ["geometry-type"], POINTS]],
      paint: { "line-color": color, "line-width": 2 } }, firstOf(map, ["circle"]));
    map.addLayer({ id: ids[2], type: "circle", source: id,
      filter: ["in", ["geometry-type"], POINTS],
      paint: { "circle-color": color, "circle-radius": 7, "circle-stroke-color": "#ffffff",
        "circle-stroke-width": 2 } });
    return ids;
  }

  function popupHtml(feature, title) {
    const rows = Object.entries(feature.properties || {}).map(([k, v]) =>
      `<tr><th>${escape(k)}</th><td>${escape(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`);
    return `<div class="popup"><h3>${escape(title)}</h3><p class="muted">${escape(feature.id ?? "")}</p>` +
      `<table>${rows.join("")}</table></div>`;
  }

  // Each load (the first, and one per language switch) has a number; only the latest may
  // change the page. An earlier load still fetching is aborted, and neither its results
  // nor its "drawn" event can overwrite the newer one's (a switch during a load used to
  // leave the list doubled and the status at "読み込み中…" while ready was already set).
  let generation = 0;
  let inflight = null;

  function drawn(map) {
    return new Promise((resolve) => {
      map.once("idle", resolve);
      map.triggerRepaint();
    });
  }

  async function load(map, config) {
    const mine = ++generation;
    const latest = () => mine === generation;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    state.ready = false;
    state.error = null;
    const t = TEXT[lang];
    $("status").textContent = t.loading;
    const ogc = new URL(config.ogc, location.href).href.replace(/\/$/, "");
    const list = (await getJSON(`${ogc}/collections?f=json`, controller.signal)).collections || [];
    const layers = [];
    for (const collection of list) {
      const data = {
        type: "FeatureCollection",
        features: await features(collection, ogc, config.maxFeatures, controller.signal),
      };
      // feature ids are URNs: keep them as a property so the popup can show them
      data.features.forEach((f) => { f.properties = { ...f.properties }; f.properties["@id"] = f.id; });
      layers.push({ collection, data });
    }
    if (!latest()) return;
    // everything is fetched: draw it at once
    const bounds = new maplibregl.LngLatBounds();
    let total = 0;
    $("layers").innerHTML = "";
    for (const [i, { collection, data }] of layers.entries()) {
      const id = `c${i}`;
      const color = PALETTE[i % PALETTE.length];
      total += data.features.length;
      const bbox = collection.extent && collection.extent.spatial && collection.extent.spatial.bbox[0];
      if (data.features.length && bbox && bbox[0] > -180) bounds.extend([[bbox[0], bbox[1]], [bbox[2], bbox[3]]]);
      if (map.getSource(id)) {
        map.getSource(id).setData(data);
      } else {
        map.addSource(id, { type: "geojson", data });
        state.layerIds.push(...addLayers(map, id, color));
      }
      state.titles[id] = collection.title;
      const item = document.createElement("li");
      item.innerHTML = `<input type="checkbox" checked id="toggle-${id}">` +
        `<span class="swatch" style="background:${color}"></span>` +
        `<label for="toggle-${id}"></label>` +
        `<span class="count">${data.features.length}</span>`;
      const name = item.querySelector("label");
      name.textContent = collection.title;
      name.title = collection.title; // the whole title, where a long one is cut short
      item.querySelector("input").addEventListener("change", (e) => {
        for (const suffix of ["fill", "line", "point"]) {
          map.setLayoutProperty(`${id}-${suffix}`, "visibility", e.target.checked ? "visible" : "none");
        }
      });
      $("layers").appendChild(item);
    }
    state.collections = list.length;
    state.features = total;
    $("status").textContent = list.length ? t.loaded(total, list.length) : t.empty;
    if (!bounds.isEmpty()) map.fitBounds(bounds, { padding: 60, maxZoom: 16, duration: 0 });
    await drawn(map);
    if (latest()) {
      inflight = null;
      state.ready = true;
    }
  }

  async function main() {
    label();
    const config = await getJSON("/viewer/config.json");
    const map = new maplibregl.Map({
      container: "map",
      style: baseStyle(config),
      center: [139.58, 35.63],
      zoom: 12,
      attributionControl: { compact: true },
    });
    map.addControl(new maplibregl.NavigationControl(), "top-right");
    map.addControl(new maplibregl.ScaleControl(), "bottom-left");
    state.map = map;
    state.rendered = () => map.queryRenderedFeatures({ layers: state.layerIds }).length;
    const run = () => {
      const mine = generation + 1;
      return load(map, config).catch((err) => {
        if (mine !== generation) return; // a newer load took over (this one was aborted)
        state.error = String(err);
        $("status").textContent = TEXT[lang].failed + err;
      });
    };
    map.on("load", run);
    // one handler for all layers: the topmost feature under the pointer (points above areas)
    map.on("click", (e) => {
      const hit = map.queryRenderedFeatures(e.point, { layers: state.layerIds })[0];
      if (!hit) return;
      const props = { ...hit.properties };
      const fid = props["@id"];
      delete props["@id"];
      new maplibregl.Popup({ maxWidth: "24rem" }).setLngLat(e.lngLat)
        .setHTML(popupHtml({ id: fid, properties: props }, state.titles[hit.source] || "")).addTo(map);
    });
    map.on("mousemove", (e) => {
      const over = map.queryRenderedFeatures(e.point, { layers: state.layerIds }).length > 0;
      map.getCanvas().style.cursor = over ? "pointer" : "";
    });
    $("lang").addEventListener("click", () => {
      lang = lang === "ja" ? "en" : "ja";
      label();
      if (map.loaded() || generation > 0) run(); // before the map's first load: that load runs
    });
  }

  main().catch((err) => { state.error = String(err); $("status").textContent = String(err); });
})();
