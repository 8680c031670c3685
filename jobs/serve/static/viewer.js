// The slide viewer: deep-zoom tiles of the slide (or its stored thumbnail), the IDC probability
// overlay (one pixel per patch, toggled and faded), the IDC regions outlined, a click shows a patch.
"use strict";

const controls = document.getElementById("controls");
const api = controls.dataset.api;
const note = document.getElementById("note");
const patchInfo = document.getElementById("patch-info");

function regionsSvg(geojson, width, height) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.id = "regions";
  for (const feature of geojson.features) {
    const rings = feature.geometry.type === "Polygon" ? [feature.geometry.coordinates]
                                                       : feature.geometry.coordinates;
    for (const polygon of rings) {
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", polygon.map((ring) => "M" + ring.map((p) => p.join(",")).join("L") + "Z").join(""));
      path.setAttribute("class", "idc-region");
      svg.appendChild(path);
    }
  }
  return svg;
}

function showPatch(p, x, y) {
  if (!p) {
    patchInfo.textContent = `(${Math.round(x)}, ${Math.round(y)}): no tissue patch scored here`;
    return;
  }
  patchInfo.textContent = `patch col ${p.col}, row ${p.row} (level-0 x ${p.x}, y ${p.y}): ` +
    `prob_idc ${p.prob_idc.toFixed(3)}, prob_patch ${p.prob_patch.toFixed(3)}, ` +
    `tissue ${(100 * p.tissue_fraction).toFixed(0)} %`;
}

async function start() {
  const info = await (await fetch(`${api}/info`)).json();
  const width = info.width || info.width0;
  const height = info.height || info.height0;
  let source;
  if (info.width) {
    source = {
      width: info.width, height: info.height, tileSize: 256, tileOverlap: 0, minLevel: 0,
      maxLevel: info.max_level, getTileUrl: (level, x, y) => `${api}/tiles/${level}/${x}_${y}.jpg`,
    };
  } else {
    source = { type: "image", url: `${api}/thumbnail.jpg`, buildPyramid: false };
    note.textContent = `Showing the stored thumbnail: ${info.slide_problem}.`;
  }
  const viewer = OpenSeadragon({
    id: "viewer", tileSources: source, drawer: "canvas", showNavigationControl: false,
    showNavigator: true, imageSmoothingEnabled: false, maxZoomPixelRatio: 4,
    gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false,
  });
  window.idcmapViewer = viewer;  // for the browser tests
  viewer.addOnceHandler("tile-drawn", () => { document.body.dataset.tiles = "drawn"; });

  if (!info.scored) {
    note.textContent = "This slide is not scored yet.";
    return;
  }
  const [bx, by, bw] = info.overlay_box;
  const opacity = document.getElementById("opacity");
  const showOverlay = document.getElementById("show-overlay");
  viewer.addTiledImage({
    tileSource: { type: "image", url: `${api}/overlay.png`, buildPyramid: false },
    x: bx / width, y: by / width, width: bw / width, opacity: opacity.value / 100,
    success: (event) => {
      const overlay = event.item;
      const update = () => overlay.setOpacity(showOverlay.checked ? opacity.value / 100 : 0);
      opacity.addEventListener("input", update);
      showOverlay.addEventListener("change", update);
      document.body.dataset.overlay = "loaded";
    },
  });

  const geojson = await (await fetch(`${api}/regions.geojson`)).json();
  const svg = regionsSvg(geojson, width, height);
  viewer.addOverlay({ element: svg, location: new OpenSeadragon.Rect(0, 0, 1, height / width) });
  document.getElementById("show-regions").addEventListener("change", (e) => {
    svg.style.display = e.target.checked ? "" : "none";
  });

  viewer.addHandler("canvas-click", async (event) => {
    if (!event.quick) return;  // a drag, not a click
    const point = viewer.viewport.pointFromPixel(event.position);
    const x = point.x * width, y = point.y * width;
    const answer = await (await fetch(`${api}/patch?x=${x}&y=${y}`)).json();
    showPatch(answer.patch, x, y);
  });
}

start().catch((e) => { note.textContent = `The viewer could not start: ${e}`; note.className = "error"; });
