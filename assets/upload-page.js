// The upload page's script: tus 1.0.0 (POST, HEAD, PATCH, DELETE on ../v1/tus/) with the link's token
// in X-Upload-Link. Each upload's address is kept in localStorage under the link, the file's name,
// size and date, so a reload or a lost network resumes it: HEAD says how far the gateway got.
'use strict';
(function () {
  const app = document.getElementById('app');
  if (!app) return;
  const TOKEN = app.dataset.token;
  const LINK = app.dataset.linkId;
  const FOLDER = app.dataset.folderId;
  const MAX_SIZE = Number(app.dataset.maxSize) || 0;
  const MAX_FILES = Number(app.dataset.maxFiles) || 0;
  const EXPIRES = Number(app.dataset.expiresAt) * 1000;
  const CHUNK = Number(app.dataset.chunkBytes) || 8 * 1024 * 1024;
  const TUS = new URL('../v1/tus/', location.href).href;
  const STORE = 'upload-link:' + LINK + ':';
  const AT_ONCE = 2;
  const MAX_DELAY_MS = 30000;
  const SPEED_WINDOW_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const list = $('list');
  const status = $('status');
  const uploads = [];
  let lastAnnounced = -1;

  // ---- formatting ----
  function bytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function duration(secs) {
    if (!isFinite(secs) || secs < 0) return '';
    secs = Math.round(secs);
    if (secs < 60) return secs + ' s';
    if (secs < 3600) return Math.floor(secs / 60) + ' min ' + (secs % 60) + ' s';
    return Math.floor(secs / 3600) + ' h ' + Math.floor((secs % 3600) / 60) + ' min';
  }
  function announce(text) { status.textContent = text; }
  function b64(text) { return btoa(String.fromCharCode.apply(null, new TextEncoder().encode(text))); }

  // ---- storage (a browser may refuse it: uploads still work, only without resume) ----
  function storeKey(file) { return STORE + JSON.stringify([file.name, file.size, file.lastModified]); }
  function remember(u) {
    try { localStorage.setItem(u.key, JSON.stringify({ url: u.url, name: u.file.name, size: u.file.size })); } catch (e) { /* no storage */ }
  }
  function forget(u) { try { localStorage.removeItem(u.key); } catch (e) { /* no storage */ } }
  function stored() {
    const out = [];
    try {
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (key && key.startsWith(STORE)) out.push([key, JSON.parse(localStorage.getItem(key))]);
      }
    } catch (e) { /* no storage */ }
    return out;
  }

  // ---- HTTP ----
  function headers(extra) {
    return Object.assign({ 'Tus-Resumable': '1.0.0', 'X-Upload-Link': TOKEN }, extra || {});
  }
  class Failure extends Error {
    constructor(message, opts) {
      super(message);
      Object.assign(this, { status: 0, code: '', retryAfter: 0, fatal: false }, opts || {});
    }
  }
  // What an answer that is not a success means for the upload.
  function failure(status, body, retryAfter, failureCode) {
    let code = failureCode || '';
    let message = '';
    try { const e = JSON.parse(body).error; code = e.code; message = e.message; } catch (e) { /* no JSON */ }
    const retry = status === 0 || status >= 500 || status === 429 || status === 423 ||
      code === 'upload_locked' || code === 'offset_mismatch' || code === 'upload_rewound';
    const human = {
      link_expired: 'This upload link has expired. Ask the sender for a new one.',
      link_invalid: 'This upload link is no longer valid. Ask the sender for a new one.',
      link_files_exhausted: 'This link accepts no more files.',
      file_too_large: 'The file is larger than this link accepts.',
      name_conflict: 'A file with this name is already there.',
    }[code];
    return new Failure(human || message || ('The gateway answered ' + status + '.'), {
      status, code, retryAfter: Number(retryAfter) || 0, fatal: !retry,
    });
  }
  async function request(method, url, extra) {
    let response;
    try {
      response = await fetch(url, { method, headers: headers(extra), cache: 'no-store' });
    } catch (e) {
      throw new Failure('The network is not reachable.', { status: 0 });
    }
    return response;
  }

  // ---- one upload ----
  class Upload {
    constructor(file) {
      this.file = file;
      this.key = storeKey(file);
      this.url = null;
      this.known = false; // the offset is what the gateway said last
      this.offset = 0;
      this.inflight = 0;
      this.state = 'queued';
      this.paused = false;
      this.attempt = 0;
      this.samples = [];
      this.fileId = null;
      this.xhr = null;
      this.wake = null;
      try { const s = JSON.parse(localStorage.getItem(this.key)); if (s && s.url) this.url = s.url; } catch (e) { /* none */ }
      this.render();
    }
    get done() { return Math.min(this.file.size, this.offset + this.inflight); }
    speed() {
      const now = performance.now();
      this.samples = this.samples.filter((s) => now - s[0] <= SPEED_WINDOW_MS);
      if (this.samples.length < 2 || this.state !== 'uploading') return 0;
      const first = this.samples[0];
      const last = this.samples[this.samples.length - 1];
      const secs = (now - first[0]) / 1000;
      return secs > 0.2 ? Math.max(0, last[1] - first[1]) / secs : 0;
    }
    sample() { this.samples.push([performance.now(), this.done]); }
    render() {
      if (!this.li) {
        const li = document.createElement('li');
        li.className = 'file';
        const id = 'f' + Math.random().toString(36).slice(2);
        li.innerHTML = '<div class="file-head"><span class="file-name"></span><span class="figures"></span></div>' +
          '<progress max="100" value="0"></progress><p class="result"></p>' +
          '<div class="actions"><button type="button" class="button pause"></button>' +
          '<button type="button" class="button cancel">Cancel</button></div>';
        li.querySelector('.file-name').textContent = this.file.name;
        li.querySelector('.file-name').id = id;
        li.querySelector('progress').setAttribute('aria-labelledby', id);
        li.querySelector('.pause').addEventListener('click', () => (this.paused ? this.resume() : this.pause()));
        li.querySelector('.cancel').addEventListener('click', () => this.cancel());
        list.appendChild(li);
        this.li = li;
      }
      const li = this.li;
      const size = this.file.size;
      const pct = size ? Math.floor((this.done / size) * 100) : (this.state === 'done' ? 100 : 0);
      const bar = li.querySelector('progress');
      bar.value = pct;
      bar.setAttribute('aria-valuetext', pct + '%');
      li.dataset.state = this.state;
      li.dataset.offset = String(this.offset);
      if (this.fileId) li.dataset.fileId = this.fileId;
      const speed = this.speed();
      let figures = bytes(this.done) + ' of ' + bytes(size) + ' (' + pct + '%)';
      if (speed > 0) figures += ' · ' + bytes(speed) + '/s · ' + duration((size - this.done) / speed) + ' left';
      li.querySelector('.figures').textContent = figures;
      const pause = li.querySelector('.pause');
      const finished = this.state === 'done' || this.state === 'error';
      pause.hidden = finished;
      pause.textContent = this.paused ? 'Resume' : 'Pause';
      pause.setAttribute('aria-label', (this.paused ? 'Resume ' : 'Pause ') + this.file.name);
      const cancel = li.querySelector('.cancel');
      cancel.hidden = finished;
      cancel.setAttribute('aria-label', 'Cancel ' + this.file.name);
    }
    setState(state, text) {
      this.state = state;
      const result = this.li.querySelector('.result');
      result.textContent = text || '';
      this.render();
      renderOverall();
    }
    pause() {
      this.paused = true;
      if (this.xhr) this.xhr.abort();
      if (this.wake) this.wake();
      this.setState('paused', 'Paused.');
      announce(this.file.name + ': paused.');
      pump();
    }
    resume() {
      this.paused = false;
      this.known = false;
      this.attempt = 0;
      this.setState('queued', 'Waiting to continue…');
      pump();
    }
    async cancel() {
      this.paused = true;
      this.cancelled = true;
      if (this.xhr) this.xhr.abort();
      if (this.wake) this.wake();
      if (this.url) {
        try { await request('DELETE', this.url); } catch (e) { /* it expires by itself */ }
      }
      forget(this);
      uploads.splice(uploads.indexOf(this), 1);
      this.li.remove();
      announce(this.file.name + ': cancelled.');
      renderOverall();
      pump();
    }

    async create() {
      const meta = [
        'filename ' + b64(this.file.name),
        'folder_id ' + b64(FOLDER),
        'on_conflict ' + b64('rename'),
      ];
      if (this.file.lastModified) {
        meta.push('content_modified_at ' + b64(new Date(this.file.lastModified).toISOString().replace(/\.\d{3}Z$/, 'Z')));
      }
      const r = await request('POST', TUS, { 'Upload-Length': String(this.file.size), 'Upload-Metadata': meta.join(',') });
      if (r.status !== 201) throw failure(r.status, await r.text(), r.headers.get('Retry-After'));
      this.url = new URL(r.headers.get('Location'), TUS).href;
      this.offset = Number(r.headers.get('Upload-Offset')) || 0;
      this.fileId = r.headers.get('Upload-Box-File-Id');
      this.known = true;
      remember(this);
    }
    async head() {
      const r = await request('HEAD', this.url);
      if (r.status === 404) { // gone (expired, or another link's): start again
        forget(this);
        this.url = null;
        this.offset = 0;
        return;
      }
      if (r.status !== 200) {
        // HEAD has no body: the status and Upload-Failure-Code say why.
        const code = r.headers.get('Upload-Failure-Code') ? 'upload_failed'
          : r.status === 401 ? 'link_invalid' : r.status === 410 ? 'link_expired' : '';
        throw failure(r.status, '', r.headers.get('Retry-After'), code);
      }
      this.offset = Number(r.headers.get('Upload-Offset')) || 0;
      this.fileId = r.headers.get('Upload-Box-File-Id');
      this.known = true;
    }
    patch() {
      return new Promise((resolve, reject) => {
        const end = Math.min(this.file.size, this.offset + CHUNK);
        const xhr = new XMLHttpRequest();
        this.xhr = xhr;
        xhr.open('PATCH', this.url);
        const h = headers({ 'Upload-Offset': String(this.offset), 'Content-Type': 'application/offset+octet-stream' });
        for (const name in h) xhr.setRequestHeader(name, h[name]);
        xhr.upload.onprogress = (e) => { this.inflight = e.loaded; this.sample(); };
        xhr.onload = () => {
          this.xhr = null;
          this.inflight = 0;
          if (xhr.status === 204) {
            this.offset = Number(xhr.getResponseHeader('Upload-Offset'));
            this.fileId = xhr.getResponseHeader('Upload-Box-File-Id');
            this.sample();
            resolve();
          } else {
            this.known = false;
            reject(failure(xhr.status, xhr.responseText, xhr.getResponseHeader('Retry-After')));
          }
        };
        xhr.onerror = () => { this.xhr = null; this.inflight = 0; this.known = false; reject(new Failure('The connection was lost.')); };
        xhr.onabort = () => { this.xhr = null; this.inflight = 0; this.known = false; reject(new Failure('Stopped.')); };
        xhr.send(this.file.slice(this.offset, end));
      });
    }
    // Sleeps before a retry; pausing, or the network coming back, cuts it short.
    backoff(ms) {
      return new Promise((resolve) => {
        const timer = setTimeout(done, ms);
        const self = this;
        function done() { clearTimeout(timer); window.removeEventListener('online', done); self.wake = null; resolve(); }
        this.wake = done;
        window.addEventListener('online', done);
      });
    }
    async run() {
      this.setState('uploading', this.url ? 'Continuing where it stopped…' : 'Uploading…');
      for (;;) {
        if (this.paused) return;
        try {
          if (this.url && !this.known) await this.head();
          if (!this.url) await this.create();
          if (this.paused) return;
          this.setState('uploading', 'Uploading…');
          while (!this.fileId) {
            await this.patch();
            this.attempt = 0;
            if (this.paused) return;
          }
          forget(this);
          this.offset = this.file.size;
          this.setState('done', 'Uploaded. Box file id: ' + this.fileId);
          announce(this.file.name + ': uploaded, Box file id ' + this.fileId + '.');
          return;
        } catch (err) {
          if (this.paused) return;
          if (err.fatal) {
            if (err.code !== 'link_expired' && err.code !== 'link_invalid') forget(this);
            this.setState('error', 'Not uploaded: ' + err.message);
            announce(this.file.name + ': not uploaded. ' + err.message);
            return;
          }
          if (err.code === 'offset_mismatch' || err.code === 'upload_rewound') continue; // HEAD says where
          this.attempt++;
          const ms = err.retryAfter ? err.retryAfter * 1000
            : Math.min(MAX_DELAY_MS, 1000 * Math.pow(2, this.attempt - 1)) * (0.5 + Math.random() / 2);
          this.setState('retrying', err.message + ' Trying again in ' + duration(ms / 1000) + ' (attempt ' + (this.attempt + 1) + ').');
          await this.backoff(ms);
          if (this.paused) return;
          this.setState('uploading', 'Trying again…');
        }
      }
    }
  }

  // ---- the queue ----
  function pump() {
    let active = uploads.filter((u) => u.state === 'uploading' || u.state === 'retrying').length;
    for (const u of uploads) {
      if (active >= AT_ONCE) break;
      if (u.state === 'queued' && !u.paused) {
        active++;
        u.state = 'uploading';
        u.run().finally(pump);
      }
    }
  }

  function add(files) {
    const now = Date.now();
    for (const file of files) {
      if (uploads.some((u) => u.key === storeKey(file) && u.state !== 'error')) continue;
      const u = new Upload(file);
      uploads.push(u);
      if (EXPIRES && now >= EXPIRES) {
        u.setState('error', 'Not uploaded: this upload link has expired. Ask the sender for a new one.');
      } else if (MAX_SIZE && file.size > MAX_SIZE) {
        u.setState('error', 'Not uploaded: the file is larger than this link accepts (' + bytes(MAX_SIZE) + ').');
      } else {
        u.setState('queued', 'Waiting…');
      }
    }
    $('overall').hidden = uploads.length === 0;
    refreshUnfinished();
    pump();
  }

  function renderOverall() {
    const all = uploads.filter((u) => u.state !== 'error');
    const total = all.reduce((n, u) => n + u.file.size, 0);
    const done = all.reduce((n, u) => n + u.done, 0);
    const pct = total ? Math.floor((done / total) * 100) : (all.length && all.every((u) => u.state === 'done') ? 100 : 0);
    const bar = $('overall-bar');
    bar.value = pct;
    bar.setAttribute('aria-valuetext', pct + '%');
    const speed = all.reduce((n, u) => n + u.speed(), 0);
    const finished = uploads.filter((u) => u.state === 'done').length;
    let text = finished + ' of ' + uploads.length + ' files done · ' + bytes(done) + ' of ' + bytes(total) + ' (' + pct + '%)';
    if (speed > 0) text += ' · ' + bytes(speed) + '/s · ' + duration((total - done) / speed) + ' left';
    $('overall-text').textContent = text;
    $('pause-all').hidden = !uploads.some((u) => !u.paused && u.state !== 'done' && u.state !== 'error');
    $('resume-all').hidden = !uploads.some((u) => u.paused);
    const tenth = Math.floor(pct / 10);
    if (tenth !== lastAnnounced && all.some((u) => u.state === 'uploading')) {
      lastAnnounced = tenth;
      announce('All files: ' + pct + '% uploaded.');
    }
  }

  // Uploads left unfinished by a reload: listed, with how far each got, until their file is chosen again.
  async function refreshUnfinished() {
    const open = stored().filter(([key]) => !uploads.some((u) => u.key === key));
    const section = $('unfinished');
    const ul = $('unfinished-list');
    section.hidden = open.length === 0;
    ul.textContent = '';
    for (const [key, entry] of open) {
      const li = document.createElement('li');
      li.textContent = entry.name + ' (' + bytes(entry.size) + ')';
      ul.appendChild(li);
      if (!refreshUnfinished.asked) {
        try {
          const r = await request('HEAD', entry.url);
          if (r.status === 404 || r.status === 410) { localStorage.removeItem(key); li.remove(); continue; }
          const offset = Number(r.headers.get('Upload-Offset')) || 0;
          li.textContent += ': ' + Math.floor((offset / (entry.size || 1)) * 100) + '% sent';
        } catch (e) { /* shown without its progress */ }
      }
    }
    refreshUnfinished.asked = true;
    section.hidden = ul.children.length === 0;
  }

  // ---- wiring ----
  const limits = [];
  if (MAX_SIZE) limits.push('Files up to ' + bytes(MAX_SIZE) + ' each.');
  if (MAX_FILES) limits.push('At most ' + MAX_FILES + (MAX_FILES === 1 ? ' file.' : ' files.'));
  if (EXPIRES) limits.push('This link works until ' + new Date(EXPIRES).toLocaleString() + '.');
  $('limits').textContent = limits.join(' ');

  const input = $('files');
  input.addEventListener('change', () => { add(Array.from(input.files)); input.value = ''; });
  const drop = $('drop');
  // A file dropped anywhere on the page is taken (not opened by the browser in place of the page).
  document.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  document.addEventListener('dragleave', (e) => { if (!e.relatedTarget) drop.classList.remove('over'); });
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer && e.dataTransfer.files.length) add(Array.from(e.dataTransfer.files));
  });
  $('pause-all').addEventListener('click', () => uploads.forEach((u) => { if (!u.paused && u.state !== 'done' && u.state !== 'error') u.pause(); }));
  $('resume-all').addEventListener('click', () => uploads.forEach((u) => { if (u.paused) u.resume(); }));
  window.addEventListener('online', pump);
  setInterval(() => {
    if (uploads.some((u) => u.state === 'uploading' || u.state === 'retrying')) {
      uploads.forEach((u) => u.render());
      renderOverall();
    }
  }, 250);
  refreshUnfinished();
})();
