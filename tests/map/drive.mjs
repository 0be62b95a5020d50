// Drives the live map page (`GET /`) of a running job in Debian's chromium, headless,
// with playwright-core. Run by tests/map.rs; also takes the README's screenshot.
//
//   node drive.mjs follow BASE_URL SCREENSHOT   the page follows a generator job; prints
//                                               RESTART and waits for a line on stdin while
//                                               the test restarts the job on the same port
//   node drive.mjs token BASE_URL TOKEN TENANT  a job with [api].tokens: the page asks
//   node drive.mjs shot BASE_URL SCREENSHOT     a screenshot with a vehicle selected
//   node drive.mjs perf BASE_URL [SECONDS]      frames and messages per second, as JSON
//   node drive.mjs tiles BASE_URL TILE_PORT     serves base-map tiles on TILE_PORT (the
//                                               job's api.map_tiles) and checks the page
//                                               draws them
//
// Every check throws with what it saw; the exit code says whether all passed.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { createServer } from 'node:http';

const [mode, base, arg3, arg4] = process.argv.slice(2);
const executablePath = process.env.FLEETFLOW_CHROMIUM || '/usr/bin/chromium';
const log = (...a) => console.error('[map]', ...a);

async function apiCount(path, token) {
  let n = 0;
  let cursor = '';
  const headers = token ? { Authorization: 'Bearer ' + token } : {};
  do {
    const r = await fetch(`${base}${path}?limit=1000${cursor ? '&cursor=' + cursor : ''}`, { headers });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    const page = await r.json();
    n += page.items.length;
    cursor = page.next_cursor || '';
  } while (cursor);
  return n;
}

const drawn = (page) => page.evaluate(() => Number(document.querySelector('#map').dataset.drawn));

// Waits until the page draws as many vehicles as the API lists (both read at once).
async function drawnMatchesApi(page, token) {
  let last;
  for (let i = 0; i < 60; i++) {
    const [d, n] = await Promise.all([drawn(page), apiCount('/v1/vehicles', token)]);
    if (d > 0 && d === n) return d;
    last = `page drew ${d}, the API lists ${n}`;
    await page.waitForTimeout(500);
  }
  throw new Error('the vehicles drawn never matched the API: ' + last);
}

const live = (page, snapshots = 1) =>
  page.waitForFunction(
    (k) => window.fleetflowMap.status === 'live' && window.fleetflowMap.snapshots >= k && window.fleetflowMap.drawn > 0,
    snapshots,
    { timeout: 60000 },
  );

async function selectAVehicle(page) {
  // A vehicle drawn well inside the canvas.
  const [x, y] = await page.evaluate(() => {
    const c = document.querySelector('#map');
    for (const id of window.fleetflowMap.vehicles.keys()) {
      const [x, y] = window.fleetflowMap.screenOf(id);
      if (x > 40 && y > 40 && x < c.width - 40 && y < c.height - 40) return [x, y];
    }
    throw new Error('no vehicle inside the map');
  });
  await page.mouse.click(x, y);
  await page.waitForFunction(() => !document.querySelector('#vehicle').hidden, null, { timeout: 10000 });
  // Its last hour comes from the lake's history route.
  await page.waitForFunction(() => /^[1-9]\d* rows, tier /.test(document.querySelector('#history-tier').textContent), null, {
    timeout: 60000,
  });
  return page.evaluate(() => document.querySelector('#vehicle').innerText);
}

async function follow(page, screenshot) {
  await live(page);
  log('live; vehicles drawn and listed:', await drawnMatchesApi(page));

  // A geofence added at runtime appears with its occupants.
  const put = await fetch(`${base}/v1/geofences/map-test`, {
    method: 'PUT',
    headers: { 'content-type': 'application/geo+json' },
    body: JSON.stringify({
      type: 'Feature',
      properties: { radius_m: 6000 },
      geometry: { type: 'Point', coordinates: [13.405, 52.52] },
    }),
  });
  if (put.status !== 201) throw new Error('PUT /v1/geofences/map-test: ' + put.status + ' ' + (await put.text()));
  await page.waitForFunction(() => window.fleetflowMap.fences.has('map-test'), null, { timeout: 20000 });
  // The page's occupancy of it is the API's at some moment (both change as vehicles move).
  let seen;
  for (let i = 0; ; i++) {
    const r = await (await fetch(`${base}/v1/geofences/map-test/occupants`)).json();
    const shown = await page.evaluate(
      () => document.querySelector('#fences li[data-id="map-test"]')?.dataset.occupants,
    );
    seen = `page ${shown}, API ${r.items.length}`;
    if (r.items.length > 0 && Number(shown) === r.items.length) break;
    if (i > 60) throw new Error('occupancy of map-test never matched: ' + seen);
    await page.waitForTimeout(250);
  }
  log('map-test occupants:', seen);

  // New events appear at the top of the list.
  const before = await page.evaluate(() => window.fleetflowMap.events[0]);
  await page.waitForFunction(
    (b) => {
      const e = window.fleetflowMap.events[0];
      const top = document.querySelector('#events li');
      return e && JSON.stringify(e) !== JSON.stringify(b) && top && top.textContent.includes(e.geofence_id);
    },
    before,
    { timeout: 30000 },
  );
  log('a new event is listed:', await page.evaluate(() => document.querySelector('#events li').textContent));

  // A dropped connection resumes after the last change it took: no new snapshot.
  const before2 = await page.evaluate(() => [window.fleetflowMap.snapshots, window.fleetflowMap.messages]);
  await page.evaluate(() => window.fleetflowMap.reconnect());
  await page.waitForFunction(
    ([snaps, msgs]) => {
      const S = window.fleetflowMap;
      return S.status === 'live' && S.messages > msgs + 10 && S.snapshots === snaps;
    },
    before2,
    { timeout: 20000 },
  );
  if ((await page.evaluate(() => window.fleetflowMap.snapshots)) !== before2[0]) throw new Error('resuming took a snapshot');
  log('resumed after a dropped connection; vehicles drawn and listed:', await drawnMatchesApi(page));

  log('selected:', (await selectAVehicle(page)).replace(/\s+/g, ' '));
  await page.screenshot({ path: screenshot });
  log('screenshot', screenshot);

  // The job restarts: the page says it is reconnecting, then resumes.
  const lines = createInterface({ input: process.stdin });
  const resumed = new Promise((ok) => lines.once('line', ok));
  console.log('RESTART');
  await page.waitForFunction(() => window.fleetflowMap.status === 'reconnecting', null, { timeout: 60000 });
  await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('reconnecting'));
  log('reconnecting shown');
  await resumed;
  await live(page, 2);
  log('resumed; vehicles drawn and listed:', await drawnMatchesApi(page));
  lines.close();
}

async function token(page, tok, tenant) {
  await page.waitForSelector('#login[open]', { timeout: 20000 });
  await page.fill('#token', 'not-a-token');
  await page.click('#login button');
  await page.waitForSelector('#login-error:not([hidden])', { timeout: 20000 });
  await page.fill('#token', tok);
  await page.click('#login button');
  await live(page);
  const n = await drawnMatchesApi(page, tok);
  const tenants = await page.evaluate(() => [...new Set([...window.fleetflowMap.vehicles.values()].map((v) => v.tenant))]);
  if (tenants.length !== 1 || tenants[0] !== tenant) throw new Error('tenants shown: ' + tenants);
  log(`${n} vehicles of ${tenant} only`);
}

// A tile server on loopback: one grey 1x1 PNG for every tile, the requests counted.
function tileServer(port) {
  const png = Buffer.from(
    'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGO4cOUGAAT0An14J3cFAAAAAElFTkSuQmCC',
    'base64',
  );
  const served = [];
  const server = createServer((req, res) => {
    served.push(req.url);
    if (!/^\/\d+\/\d+\/\d+\.png$/.test(req.url)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'image/png' }).end(png);
  });
  return new Promise((ok) => server.listen(Number(port), '127.0.0.1', () => ok({ server, served })));
}

async function tilesDrawn(page, port) {
  const { server, served } = await tileServer(port);
  try {
    await page.reload();
    await live(page);
    await page.waitForFunction(() => window.fleetflowMap.tilesDrawn > 0, null, { timeout: 20000 });
    const bad = served.filter((u) => !/^\/\d+\/\d+\/\d+\.png$/.test(u));
    if (!served.length || bad.length) throw new Error('tile requests: ' + served.join(' '));
    const shown = await page.evaluate(() => document.querySelector('#attribution').textContent);
    if (!shown.includes('127.0.0.1:' + port)) throw new Error('attribution: ' + shown);
    log(`${served.length} tiles served, e.g. ${served[0]}`);
  } finally {
    server.close();
  }
}

const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + '/');
  if (mode === 'follow') await follow(page, arg3);
  else if (mode === 'token') await token(page, arg3, arg4);
  else if (mode === 'tiles') await tilesDrawn(page, arg3);
  else if (mode === 'shot') {
    await live(page);
    await selectAVehicle(page);
    await page.waitForTimeout(1000);
    await page.screenshot({ path: arg3 });
  } else if (mode === 'perf') {
    // How the page keeps up with a large fleet: frames drawn, their cost, messages taken.
    await live(page);
    await page.waitForTimeout(3000);
    const seconds = Number(arg3 || 10);
    const r = await page.evaluate(async (seconds) => {
      const S = window.fleetflowMap;
      const frames = [];
      const [t0, n0, s0] = [performance.now(), S.messages, S.snapshots];
      await new Promise((ok) => {
        const f = () => {
          frames.push(S.frameMs);
          if (performance.now() - t0 < seconds * 1000) requestAnimationFrame(f);
          else ok();
        };
        requestAnimationFrame(f);
      });
      frames.sort((a, b) => a - b);
      return {
        drawn: S.drawn,
        frames_per_s: frames.length / seconds,
        frame_ms_p50: frames[frames.length >> 1],
        frame_ms_max: frames[frames.length - 1],
        messages_per_s: (S.messages - n0) / seconds,
        snapshots_again: S.snapshots - s0, // reconnects (a lagged client resumes or resets)
      };
    }, seconds);
    console.log(JSON.stringify(r));
  } else throw new Error('unknown mode ' + mode);
  if (errors.length) throw new Error('errors in the page: ' + errors.join('; '));
} catch (e) {
  failed = true;
  log('FAILED:', e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
