// The live fleet map served at `/` by a fleetflow job: plain JavaScript, no dependencies,
// nothing fetched from outside the job unless `[api].map_tiles` names a tile server.
//
// It follows `GET /v1/stream` (a snapshot, then every change; the browser's EventSource
// resumes with Last-Event-ID, and a restarted job answers `reset` and a fresh snapshot),
// keeps the geofences from `GET /v1/geofences`, and draws everything on one canvas (one
// path per status colour, so 10,000 moving vehicles cost a few draw calls per frame).
'use strict';

const COLORS = { moving: '#2e9d4f', idle: '#e0a100', parked: '#3b6fd8', offline: '#8a8f98' };
const EVENTS_SHOWN = 30;
const FENCES_SHOWN = 60;
const TILE = 256;

// Everything the page knows; also read by the browser tests (`window.fleetflowMap`).
const S = {
  token: sessionStorage.getItem('fleetflow-token') || '',
  vehicles: new Map(), // id -> vehicle state
  fences: new Map(), // id -> { id, tenant, kind, circle: [lon, lat, m] | polygons: [[[lon, lat]]] }
  occupants: new Map(), // geofence id -> Map(vehicle id -> entered_at)
  events: [], // newest first
  selected: null,
  track: [],
  status: 'connecting',
  asOf: null,
  lastId: null,
  drawn: 0,
  snapshots: 0,
  messages: 0,
  frameMs: 0,
  tilesDrawn: 0,
  view: null, // { x, y, zoom }: the centre in world pixels at zoom 0
  autoFit: true, // the view follows the whole fleet until the user pans, zooms or clicks
};
window.fleetflowMap = S;

const $ = (sel) => document.querySelector(sel);
const canvas = $('#map');
const ctx = canvas.getContext('2d');
const tiles = document.querySelector('meta[name="fleetflow-tiles"]').content.trim();
const tileCache = new Map();

// --- the API ---------------------------------------------------------------------------

function authHeaders() {
  return S.token ? { Authorization: 'Bearer ' + S.token } : {};
}

async function api(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  if (r.status === 401) {
    askToken('The token was not accepted.');
    throw new Error('unauthorized');
  }
  if (!r.ok) throw new Error(path + ': ' + r.status);
  return r.json();
}

function askToken(message) {
  const dialog = $('#login');
  const err = $('#login-error');
  err.hidden = !message || !S.token;
  err.textContent = message || '';
  if (!dialog.open) dialog.showModal();
}

$('#login-form').addEventListener('submit', () => {
  S.token = $('#token').value.trim();
  sessionStorage.setItem('fleetflow-token', S.token);
  start();
});

// --- geofences -------------------------------------------------------------------------

function parseFence(item) {
  const f = { id: item.id, tenant: item.tenant, kind: item.kind };
  const g = item.feature.geometry;
  if (g.type === 'Point') {
    f.circle = [g.coordinates[0], g.coordinates[1], Number(item.feature.properties.radius_m)];
  } else if (g.type === 'Polygon') {
    f.polygons = [g.coordinates];
  } else if (g.type === 'MultiPolygon') {
    f.polygons = g.coordinates;
  }
  return f;
}

let fencesLoading = null;
function loadFences() {
  if (fencesLoading) return fencesLoading;
  fencesLoading = (async () => {
    const next = new Map();
    let cursor = '';
    do {
      const page = await api('/v1/geofences?limit=1000' + (cursor ? '&cursor=' + cursor : ''));
      for (const item of page.items) next.set(item.id, parseFence(item));
      cursor = page.next_cursor || '';
    } while (cursor);
    S.fences = next;
    dirty();
  })().finally(() => {
    fencesLoading = null;
  });
  return fencesLoading;
}

// --- the live stream -------------------------------------------------------------------

let source = null;
let retry = null;

function setStatus(status) {
  S.status = status;
  const el = $('#status');
  el.dataset.state = status;
  el.textContent = status === 'live' ? 'live' : status === 'reconnecting' ? 'reconnecting…' : 'connecting…';
}

function connect() {
  clearTimeout(retry);
  if (source) source.close();
  // Each vehicle at most 4 times a second: what the page parses follows the fleet, not
  // its fix rate (every geofence event still comes).
  const q = new URLSearchParams({ topics: 'vehicles,geofence_events', conflate_ms: '250' });
  if (S.token) q.set('access_token', S.token);
  if (S.lastId) q.set('last_event_id', S.lastId);
  const es = new EventSource('/v1/stream?' + q);
  source = es;
  const on = (type, f) =>
    es.addEventListener(type, (m) => {
      const msg = JSON.parse(m.data);
      S.messages += 1;
      if (m.lastEventId) S.lastId = m.lastEventId;
      if (msg.as_of != null) S.asOf = msg.as_of;
      f(msg);
      dirty();
    });
  on('snapshot', snapshot);
  on('vehicle', (m) => {
    if (m.vehicle) S.vehicles.set(m.vehicle.vehicle_id, m.vehicle);
    else if (m.removed) S.vehicles.delete(m.removed);
  });
  on('geofence_event', (m) => geofenceEvent(m.event));
  on('reset', () => {}); // a fresh snapshot follows
  on('lagged', () => reconnectSoon(200));
  es.onopen = () => setStatus('live');
  es.onerror = () => {
    setStatus('reconnecting');
    // The browser retries by itself (with Last-Event-ID) while the job is unreachable;
    // an answer it will not retry (e.g. 401, 503) closes the source: try again here.
    if (es.readyState === EventSource.CLOSED) reconnectSoon(1000);
  };
}

// Drops the connection and resumes after the last change taken (the browser tests use it).
S.reconnect = () => reconnectSoon(100);

function reconnectSoon(ms) {
  if (source) source.close();
  setStatus('reconnecting');
  clearTimeout(retry);
  retry = setTimeout(async () => {
    try {
      await api('/v1/geofences?limit=1'); // asks for a token when it is refused
      loadFences().catch(() => {});
      connect();
    } catch (e) {
      reconnectSoon(Math.min(ms * 2, 5000));
    }
  }, ms);
}

function snapshot(m) {
  S.snapshots += 1;
  S.vehicles = new Map((m.vehicles || []).map((v) => [v.vehicle_id, v]));
  S.occupants = new Map();
  for (const o of m.occupants || []) occupantsOf(o.geofence_id).set(o.vehicle_id, o.entered_at);
  if (S.autoFit) fitAt = -Infinity; // fit the fleet at once, not only the geofences
  // A job that restarted may have other geofences.
  loadFences().catch(() => {});
}

function occupantsOf(id) {
  let m = S.occupants.get(id);
  if (!m) S.occupants.set(id, (m = new Map()));
  return m;
}

function geofenceEvent(e) {
  if (e.kind === 'enter') occupantsOf(e.geofence_id).set(e.vehicle_id, e.ts);
  if (e.kind === 'exit') occupantsOf(e.geofence_id).delete(e.vehicle_id);
  S.events.unshift(e);
  if (S.events.length > EVENTS_SHOWN) S.events.length = EVENTS_SHOWN;
  // A geofence added or removed at runtime: its events say so before the list does.
  if (!S.fences.has(e.geofence_id) || e.cause !== 'fix') loadFences().catch(() => {});
}

// --- projection and view ---------------------------------------------------------------

function worldX(lon) {
  return ((lon + 180) / 360) * TILE;
}
function worldY(lat) {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE;
}
function scale() {
  return Math.pow(2, S.view.zoom);
}
function toScreen(lon, lat) {
  const k = scale();
  return [(worldX(lon) - S.view.x) * k + canvas.width / 2, (worldY(lat) - S.view.y) * k + canvas.height / 2];
}
function fromScreen(px, py) {
  const k = scale();
  const x = (px - canvas.width / 2) / k + S.view.x;
  const y = (py - canvas.height / 2) / k + S.view.y;
  const lon = (x / TILE) * 360 - 180;
  const n = Math.PI - (2 * Math.PI * y) / TILE;
  return [lon, (180 / Math.PI) * Math.atan(0.5 * (Math.exp(n) - Math.exp(-n)))];
}

// Where vehicle `id` is drawn, in the canvas's pixels (the browser tests click there).
S.screenOf = (id) => {
  const v = S.vehicles.get(id);
  return v && S.view ? toScreen(v.lon, v.lat) : null;
};

function fit() {
  const pts = [];
  for (const v of S.vehicles.values()) pts.push([v.lon, v.lat]);
  if (!pts.length) for (const f of S.fences.values()) if (f.circle) pts.push(f.circle);
  if (!pts.length) return;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [lon, lat] of pts) {
    const x = worldX(lon), y = worldY(lat);
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const w = Math.max(x1 - x0, 1e-6), h = Math.max(y1 - y0, 1e-6);
  const zoom = Math.log2(Math.min(canvas.width / w, canvas.height / h) * 0.9);
  S.view = { x: (x0 + x1) / 2, y: (y0 + y1) / 2, zoom: Math.max(1, Math.min(18, zoom)) };
}

// --- drawing ---------------------------------------------------------------------------

let frame = 0;
let fitAt = -Infinity;
function dirty() {
  if (!frame) frame = requestAnimationFrame(draw);
}

function resize() {
  const r = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(r.width));
  canvas.height = Math.max(1, Math.round(r.height));
  dirty();
}

function drawTiles() {
  const z = Math.max(0, Math.min(19, Math.round(S.view.zoom)));
  const k = Math.pow(2, S.view.zoom - z); // screen pixels per tile pixel
  const n = Math.pow(2, z);
  const cx = S.view.x * n, cy = S.view.y * n; // centre in tile pixels at z
  const tx0 = Math.floor((cx - canvas.width / 2 / k) / TILE);
  const ty0 = Math.floor((cy - canvas.height / 2 / k) / TILE);
  const tx1 = Math.floor((cx + canvas.width / 2 / k) / TILE);
  const ty1 = Math.floor((cy + canvas.height / 2 / k) / TILE);
  for (let tx = tx0; tx <= tx1; tx++) {
    for (let ty = Math.max(0, ty0); ty <= Math.min(n - 1, ty1); ty++) {
      const x = ((tx % n) + n) % n;
      const url = tiles.replace('{z}', z).replace('{x}', x).replace('{y}', ty);
      let img = tileCache.get(url);
      if (!img) {
        img = new Image();
        img.onload = dirty;
        img.src = url;
        tileCache.set(url, img);
        if (tileCache.size > 500) tileCache.delete(tileCache.keys().next().value);
      }
      if (img.complete && img.naturalWidth) {
        S.tilesDrawn += 1;
        const sx = (tx * TILE - cx) * k + canvas.width / 2;
        const sy = (ty * TILE - cy) * k + canvas.height / 2;
        ctx.drawImage(img, sx, sy, TILE * k + 0.5, TILE * k + 0.5);
      }
    }
  }
}

function metresPerPixel(lat) {
  return (40075016.686 * Math.cos((lat * Math.PI) / 180)) / (TILE * scale());
}

function drawFences() {
  for (const f of S.fences.values()) {
    const n = S.occupants.get(f.id)?.size || 0;
    ctx.beginPath();
    let label;
    if (f.circle) {
      const [lon, lat, m] = f.circle;
      const [x, y] = toScreen(lon, lat);
      ctx.arc(x, y, Math.max(2, m / metresPerPixel(lat)), 0, 2 * Math.PI);
      label = [x, y];
    } else if (f.polygons) {
      for (const poly of f.polygons) {
        for (const ring of poly) {
          ring.forEach(([lon, lat], i) => {
            const [x, y] = toScreen(lon, lat);
            if (i) ctx.lineTo(x, y);
            else ctx.moveTo(x, y);
          });
          ctx.closePath();
        }
      }
      const ring = f.polygons[0][0];
      label = toScreen(...ring.reduce((a, p) => [a[0] + p[0] / ring.length, a[1] + p[1] / ring.length], [0, 0]));
    }
    ctx.fillStyle = n ? 'rgba(124, 58, 237, 0.16)' : 'rgba(124, 58, 237, 0.07)';
    ctx.fill('evenodd'); // holes stay empty
    ctx.strokeStyle = 'rgba(124, 58, 237, 0.8)';
    ctx.lineWidth = 1.5;
    ctx.stroke();
    if (label && S.view.zoom > 9) {
      ctx.fillStyle = '#4c1d95';
      ctx.font = '12px system-ui, sans-serif';
      ctx.textAlign = 'center';
      ctx.fillText(`${f.id} · ${n}`, label[0], label[1]);
    }
  }
}

function drawVehicles() {
  const size = S.view.zoom > 13 ? 7 : 5;
  const h = size / 2;
  let drawn = 0;
  for (const status of Object.keys(COLORS)) {
    ctx.beginPath();
    for (const v of S.vehicles.values()) {
      if ((COLORS[v.status] ? v.status : 'offline') !== status) continue;
      const [x, y] = toScreen(v.lon, v.lat);
      ctx.rect(x - h, y - h, size, size);
      drawn++;
    }
    ctx.fillStyle = COLORS[status];
    ctx.fill();
  }
  S.drawn = drawn;
  canvas.dataset.drawn = String(drawn);
}

function drawSelection() {
  const v = S.selected && S.vehicles.get(S.selected);
  if (S.track.length > 1) {
    ctx.beginPath();
    S.track.forEach(([lon, lat], i) => {
      const [x, y] = toScreen(lon, lat);
      if (i) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
    });
    ctx.strokeStyle = 'rgba(220, 38, 38, 0.8)';
    ctx.lineWidth = 2;
    ctx.stroke();
  }
  if (v) {
    const [x, y] = toScreen(v.lon, v.lat);
    ctx.beginPath();
    ctx.arc(x, y, 9, 0, 2 * Math.PI);
    ctx.strokeStyle = '#dc2626';
    ctx.lineWidth = 2.5;
    ctx.stroke();
  }
}

function draw() {
  const began = performance.now();
  frame = 0;
  if (!S.view || (S.autoFit && performance.now() - fitAt > 1000)) {
    fit();
    fitAt = performance.now();
  }
  ctx.fillStyle = '#e8ecef';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (S.view) {
    if (tiles) drawTiles();
    drawFences();
    drawSelection();
    drawVehicles();
  }
  panel();
  S.frameMs = performance.now() - began; // how long the last frame took (tests read it)
}

// --- the side panel --------------------------------------------------------------------

const fmt = (x, d = 1) => (x == null || !isFinite(x) ? '–' : Number(x).toFixed(d));
const time = (ms) => (ms == null ? '–' : new Date(ms).toISOString().replace('T', ' ').slice(0, 19));

function li(parts, cls) {
  const el = document.createElement('li');
  if (cls) el.className = cls;
  for (const p of parts) {
    const s = document.createElement('span');
    s.textContent = p;
    el.append(s);
  }
  return el;
}

let panelAt = -Infinity;
let panelLater = null;
function panel() {
  const now = performance.now();
  if (now - panelAt < 250) {
    // The lists at most 4 times a second; one redraw is due when the quarter ends.
    panelLater ??= setTimeout(() => {
      panelLater = null;
      dirty();
    }, 250 - (now - panelAt));
    return;
  }
  panelAt = now;
  $('#as-of').textContent = 'job clock: ' + time(S.asOf);
  const counts = {};
  for (const v of S.vehicles.values()) counts[v.status] = (counts[v.status] || 0) + 1;
  $('#counts').replaceChildren(
    ...Object.keys(COLORS).map((s) => {
      const el = li([`${s} ${counts[s] || 0}`]);
      el.style.setProperty('--c', COLORS[s]);
      return el;
    }),
  );
  const fences = [...S.fences.values()]
    .map((f) => [f, S.occupants.get(f.id)?.size || 0])
    .sort((a, b) => b[1] - a[1] || a[0].id.localeCompare(b[0].id))
    .slice(0, FENCES_SHOWN);
  $('#fence-count').textContent = String(S.fences.size);
  $('#fences').replaceChildren(
    ...fences.map(([f, n]) => {
      const el = li([f.id, `${n} inside`]);
      el.dataset.id = f.id;
      el.dataset.occupants = String(n);
      el.onclick = () => zoomTo(f);
      return el;
    }),
  );
  $('#events').replaceChildren(
    ...S.events.map((e) => li([time(e.ts).slice(11), `${e.kind} ${e.geofence_id}`, e.vehicle_id], 'kind-' + e.kind)),
  );
  vehiclePanel();
}

function vehiclePanel() {
  const v = S.selected && S.vehicles.get(S.selected);
  $('#vehicle').hidden = !v;
  if (!v) return;
  $('#vehicle-id').textContent = v.vehicle_id;
  const kmPerL = v.today_fuel_used_l > 0 ? v.today_distance_km / v.today_fuel_used_l : null;
  const rows = [
    ['status', v.status],
    ['tenant', v.tenant],
    ['fix', time(v.ts)],
    ['position', `${fmt(v.lat, 5)}, ${fmt(v.lon, 5)}`],
    ['speed', `${fmt(v.speed_kmh)} km/h`],
    ['fuel level', `${fmt(v.fuel_level_pct)} %`],
    ['today', `${fmt(v.today_distance_km, 2)} km`],
    ['fuel today', `${fmt(v.today_fuel_used_l, 2)} l`],
    ['km/L today', fmt(kmPerL, 2)],
    ['idle today', `${fmt(v.today_idle_s / 60)} min`],
  ];
  $('#vehicle-state').replaceChildren(
    ...rows.flatMap(([k, val]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = val;
      return [dt, dd];
    }),
  );
}

// The selected vehicle's last hour, from the lake (`/v1/vehicles/{id}/history`).
async function loadHistory() {
  const id = S.selected;
  const v = id && S.vehicles.get(id);
  if (!v) return;
  const to = Math.max(v.ts, S.asOf || 0) + 1;
  try {
    const h = await api(`/v1/vehicles/${encodeURIComponent(id)}/history?from=${to - 3600000}&to=${to}`);
    if (S.selected !== id) return;
    S.track = h.items.filter((r) => r.lat != null).map((r) => [r.lon, r.lat]);
    $('#history-tier').textContent = `${h.items.length} rows, tier ${h.tier}`;
    $('#history-note').textContent = h.items.length ? '' : 'nothing in the lake yet';
    sparkline(h.items.map((r) => r.speed_kmh ?? r.avg_speed_kmh ?? 0));
  } catch (e) {
    $('#history-note').textContent = 'history unavailable (' + e.message + ')';
  }
  dirty();
}

function sparkline(values) {
  const c = $('#speed');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  if (values.length < 2) return;
  const max = Math.max(10, ...values);
  g.beginPath();
  values.forEach((s, i) => {
    const x = (i / (values.length - 1)) * c.width;
    const y = c.height - (s / max) * (c.height - 4) - 2;
    if (i) g.lineTo(x, y);
    else g.moveTo(x, y);
  });
  g.strokeStyle = COLORS.moving;
  g.stroke();
  g.fillStyle = '#6b7280';
  g.font = '10px system-ui';
  g.fillText(`${Math.round(max)} km/h`, 4, 10);
}

function select(id) {
  S.selected = id;
  S.track = [];
  dirty();
  loadHistory();
}
$('#vehicle-close').onclick = () => select(null);

function zoomTo(f) {
  const [lon, lat] = f.circle || f.polygons[0][0][0];
  S.autoFit = false;
  S.view = { x: worldX(lon), y: worldY(lat), zoom: Math.max(S.view.zoom, 14) };
  dirty();
}

// --- interaction -----------------------------------------------------------------------

let drag = null;
canvas.addEventListener('pointerdown', (e) => {
  S.autoFit = false;
  drag = { x: e.offsetX, y: e.offsetY, moved: false };
  canvas.setPointerCapture(e.pointerId);
});
canvas.addEventListener('pointermove', (e) => {
  if (!drag || !S.view) return;
  const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
  if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
  if (!drag.moved) return;
  canvas.classList.add('dragging');
  S.view.x -= dx / scale();
  S.view.y -= dy / scale();
  drag.x = e.offsetX;
  drag.y = e.offsetY;
  dirty();
});
canvas.addEventListener('pointerup', (e) => {
  canvas.classList.remove('dragging');
  const click = drag && !drag.moved;
  drag = null;
  if (!click || !S.view) return;
  let best = null, bestD = 100; // within 10 px
  for (const v of S.vehicles.values()) {
    const [x, y] = toScreen(v.lon, v.lat);
    const d = (x - e.offsetX) ** 2 + (y - e.offsetY) ** 2;
    if (d < bestD) [best, bestD] = [v.vehicle_id, d];
  }
  select(best);
});
canvas.addEventListener(
  'wheel',
  (e) => {
    if (!S.view) return;
    e.preventDefault();
    S.autoFit = false;
    const before = fromScreen(e.offsetX, e.offsetY);
    S.view.zoom = Math.max(1, Math.min(19, S.view.zoom - e.deltaY * 0.002));
    const [x, y] = toScreen(...before); // keep the point under the cursor
    S.view.x += (x - e.offsetX) / scale();
    S.view.y += (y - e.offsetY) / scale();
    dirty();
  },
  { passive: false },
);
window.addEventListener('resize', resize);

// --- start -----------------------------------------------------------------------------

async function start() {
  if (tiles) {
    const a = $('#attribution');
    a.hidden = false;
    a.textContent = 'tiles: ' + new URL(tiles.replace(/[{}]/g, '')).host;
  }
  try {
    await loadFences(); // also finds out whether a token is needed
  } catch (e) {
    if (e.message === 'unauthorized') return; // the dialog is open; submitting starts again
  }
  connect();
}

setInterval(() => loadFences().catch(() => {}), 10000); // geofences changed with no events
setInterval(loadHistory, 5000);
resize();
start();
