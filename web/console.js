/*
 * console.js - ferry-center's web console.
 *
 * One page with four views (hosts, VMs, tasks, audit) chosen by the URL's
 * hash. Every view asks the REST API (docs/api.md) for one page of its
 * list (offset, limit, q) and polls it while it is shown: tasks every
 * second (live progress), the others every few seconds. Only table bodies
 * are redrawn, so a search box keeps its focus and text while polling.
 *
 * A VM's name opens its details (its disks, a migration under way with the
 * datastore its disks go to, why HA has not restarted it; fault
 * tolerance: state, hosts, checkpoint rate, bytes per epoch, added output
 * latency, primary slowdown, events), asked again every second while open.
 * A task that moves disks names their datastore beside its hosts.
 *
 * The hosts view also shows DRS (GET /api/v1/drs): its mode, the
 * imbalance and its recommendations, each with an Apply button (POST
 * /api/v1/drs/apply), and DPM's standby hosts.
 *
 * The bearer token lives in sessionStorage. /whoami tells the role: a
 * read-only token gets no action buttons (body.readonly hides them), and
 * any 403 the API still answers is shown in the notice bar as it is.
 * Everything the API returns is put on the page with textContent, never
 * as HTML.
 */
'use strict';

const API = '/api/v1';
const PAGE = 50;
const POLL_MS = { hosts: 3000, vms: 3000, tasks: 1000, audit: 4000 };
const TOKEN_KEY = 'ferry.token';
const WIZARD_ROWS = 25;   /* candidates and refused hosts shown in the wizard */

const state = {
	token: sessionStorage.getItem(TOKEN_KEY),
	role: null,
	view: 'hosts',
	hosts: { offset: 0, q: '', total: 0, open: new Set() },
	vms: { offset: 0, q: '', host: '', total: 0 },
	tasks: { offset: 0, total: 0 },
	audit: { offset: 0, q: '', total: 0 },
	timer: null,
	noticeTimer: null,
	wizard: null,
	details: null,        /* the VM whose details are open */
	detailsTimer: null,
};

const $ = (id) => document.getElementById(id);

/* ---- small DOM helpers --------------------------------------------------- */

function el(tag, props, ...children) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(props || {})) {
		if (v === undefined || v === null || v === false)
			continue;
		if (k === 'class')
			e.className = v;
		else if (k.startsWith('on'))
			e.addEventListener(k.slice(2), v);
		else if (k === 'dataset')
			Object.assign(e.dataset, v);
		else
			e.setAttribute(k, v === true ? '' : v);
	}
	for (const c of children.flat()) {
		if (c === null || c === undefined || c === false)
			continue;
		e.append(c instanceof Node ? c : document.createTextNode(String(c)));
	}
	return e;
}

function badge(text, kind) {
	return el('span', { class: 'badge ' + (kind || text) }, text);
}

function fill(tbody, rows, columns, emptyText) {
	if (!rows.length)
		rows = [el('tr', {}, el('td', { class: 'empty', colspan: columns }, emptyText))];
	tbody.replaceChildren(...rows);
}

function mib(n) {
	if (n === null || n === undefined)
		return '–';
	return n >= 10240 ? (n / 1024).toFixed(1) + ' GiB' : n + ' MiB';
}

function bytes(n) {
	if (!n)
		return '0 B';
	const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
	let i = 0;
	while (n >= 1024 && i < units.length - 1) {
		n /= 1024;
		i++;
	}
	return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function ms(n) {
	if (n === null || n === undefined)
		return '–';
	return n >= 10000 ? (n / 1000).toFixed(1) + ' s' : n + ' ms';
}

function when(iso) {
	if (!iso)
		return '–';
	const d = new Date(iso);
	const ago = (Date.now() - d.getTime()) / 1000;
	if (ago >= -5 && ago < 60)
		return Math.max(0, Math.round(ago)) + ' s ago';
	if (ago >= 60 && ago < 3600)
		return Math.round(ago / 60) + ' min ago';
	return iso.replace('T', ' ').replace('Z', ' UTC');
}

/* ---- the API ------------------------------------------------------------- */

class ApiError extends Error {
	constructor(status, error) {
		super(error.message || ('HTTP ' + status));
		this.status = status;
		this.hint = error.hint;
	}
}

async function api(method, path, body) {
	const headers = { Authorization: 'Bearer ' + state.token };
	if (body !== undefined)
		headers['Content-Type'] = 'application/json';
	let r;
	try {
		r = await fetch(API + path, {
			method, headers, body: body === undefined ? undefined : JSON.stringify(body),
		});
	} catch (e) {
		throw new ApiError(0, { message: 'ferry-center does not answer (' + e.message + ')' });
	}
	let j = null;
	try {
		j = await r.json();
	} catch (e) { /* not JSON: keep the status */ }
	if (!r.ok) {
		const err = new ApiError(r.status, (j && j.error) || { message: r.statusText });
		if (r.status === 401)
			signOut('The token was refused: ' + err.message);
		throw err;
	}
	return j;
}

function describe(err) {
	if (err.status === 403)
		return 'Not allowed with this token (403): ' + err.message +
			(err.hint ? '. ' + err.hint : '');
	return err.message + (err.hint ? ' — ' + err.hint : '');
}

/* An error stays until dismissed; news (kind 'info') goes after a while. */
function notice(text, kind) {
	clearTimeout(state.noticeTimer);
	$('notice-text').textContent = text;
	$('notice').className = 'notice' + (kind ? ' ' + kind : '');
	$('notice').hidden = false;
	if (kind === 'info')
		state.noticeTimer = setTimeout(() => { $('notice').hidden = true; }, 10000);
}

function qs(params) {
	const p = new URLSearchParams();
	for (const [k, v] of Object.entries(params))
		if (v !== '' && v !== null && v !== undefined)
			p.set(k, v);
	return '?' + p.toString();
}

/* ---- signing in and out -------------------------------------------------- */

async function signIn(token) {
	state.token = token;
	const me = await api('GET', '/whoami');
	sessionStorage.setItem(TOKEN_KEY, token);
	state.role = me.role;
	$('who-name').textContent = me.user;
	$('who-role').textContent = me.role;
	document.body.classList.toggle('readonly', me.role !== 'admin');
	$('readonly-banner').hidden = me.role === 'admin';
	$('login').hidden = true;
	$('app').hidden = false;
	$('nav').hidden = false;
	$('who').hidden = false;
	route();
}

function signOut(why) {
	sessionStorage.removeItem(TOKEN_KEY);
	state.token = null;
	state.role = null;
	clearTimeout(state.timer);
	$('app').hidden = true;
	$('notice').hidden = true;
	$('nav').hidden = true;
	$('who').hidden = true;
	$('summary').textContent = '';
	$('login').hidden = false;
	$('login-error').textContent = why || '';
	$('token').value = '';
	$('token').focus();
}

/* ---- views and polling --------------------------------------------------- */

const views = { hosts: loadHosts, vms: loadVMs, tasks: loadTasks, audit: loadAudit };

function route() {
	const v = location.hash.replace('#', '') || 'hosts';
	state.view = views[v] ? v : 'hosts';
	for (const name of Object.keys(views))
		$('view-' + name).hidden = name !== state.view;
	for (const a of document.querySelectorAll('nav a'))
		a.classList.toggle('current', a.dataset.view === state.view);
	refresh();
}

async function refresh() {
	clearTimeout(state.timer);
	if (!state.token)
		return;
	const view = state.view;
	try {
		await Promise.all([views[view](), loadSummary()]);
	} catch (e) {
		if (e.status !== 401)
			notice(describe(e));
	}
	if (state.token && view === state.view)
		state.timer = setTimeout(refresh, POLL_MS[view]);
}

async function loadSummary() {
	const c = await api('GET', '/cluster');
	$('summary').replaceChildren(
		el('b', {}, c.hosts.toLocaleString()), ' hosts · ',
		el('b', {}, c.vms.toLocaleString()), ' VMs · ',
		el('b', {}, String(c.tasks_running)), ' running · ',
		el('b', {}, String(c.tasks_queued)), ' queued');
}

function pager(id, page, reload) {
	const from = page.total ? page.offset + 1 : 0;
	const to = Math.min(page.offset + PAGE, page.total);
	const prev = el('button', {
		class: 'small', disabled: page.offset === 0,
		onclick: () => { page.offset = Math.max(0, page.offset - PAGE); reload(); },
	}, '‹ Prev');
	const next = el('button', {
		class: 'small', disabled: to >= page.total,
		onclick: () => { page.offset += PAGE; reload(); },
	}, 'Next ›');
	$(id).replaceChildren(el('span', { class: 'range' },
		`${from.toLocaleString()}–${to.toLocaleString()} of ${page.total.toLocaleString()}`),
		prev, next);
}

function searchBox(id, page) {
	let timer = null;
	$(id).addEventListener('input', () => {
		clearTimeout(timer);
		timer = setTimeout(() => {
			page.q = $(id).value.trim();
			page.offset = 0;
			refresh();
		}, 250);
	});
}

/* ---- hosts --------------------------------------------------------------- */

async function loadHosts() {
	const p = state.hosts;
	const r = await api('GET', '/hosts' + qs({ offset: p.offset, limit: PAGE, q: p.q }));
	p.total = r.total;
	/* a small cluster shows every host's VMs; a big one on request */
	if (r.total <= 8)
		for (const h of r.hosts)
			p.open.add(h.name);
	const open = r.hosts.filter((h) => p.open.has(h.name));
	const vmLists = await Promise.all(open.map((h) =>
		api('GET', '/vms' + qs({ host: h.name, limit: 24 })).catch(() => null)));
	const byHost = new Map(open.map((h, i) => [h.name, vmLists[i]]));
	const rows = [];
	for (const h of r.hosts) {
		rows.push(hostRow(h));
		if (byHost.has(h.name))
			rows.push(hostVMsRow(h, byHost.get(h.name)));
	}
	fill($('hosts-table').tBodies[0], rows, 9, p.q ? 'No host matches.' : 'No hosts yet.');
	pager('hosts-pager', p, refresh);
	await loadDrs();
}

/* DRS's last pass: mode, imbalance, recommendations (or the moves it made). */
async function loadDrs() {
	const d = await api('GET', '/drs');
	const imb = typeof d.imbalance === 'number' ? d.imbalance.toFixed(3) : '–';
	$('drs-summary').textContent = `mode ${d.mode || 'off'} · threshold ${d.threshold ?? '–'}` +
		` · imbalance ${imb} (tolerance ${d.tolerance ?? '–'})` +
		(d.waiting ? ` · waiting: ${d.waiting}` : '') +
		(d.dpm && d.dpm.enabled ? ' · DPM on' : '');
	const rows = (d.recommendations || []).map((r) => el('tr', { dataset: { vm: r.vm } },
		el('td', { class: 'num' }, String(r.id)),
		el('td', {}, el('b', {}, r.vm)),
		el('td', {}, `${r.from} → ${r.to}`),
		el('td', { class: 'muted' }, r.reason),
		el('td', { class: 'actions' }, el('button', {
			class: 'small admin-only drs-apply',
			title: 'Queue this migration',
			onclick: (e) => applyDrs(e.target, r),
		}, 'Apply'))));
	for (const r of d.applied || [])
		rows.push(el('tr', { dataset: { vm: r.vm } }, el('td', { class: 'num' }, String(r.id)),
			el('td', {}, el('b', {}, r.vm)), el('td', {}, `${r.from} → ${r.to}`),
			el('td', { class: 'muted' }, r.reason),
			el('td', {}, badge(`task ${r.task}`, 'run'))));
	fill($('drs-table').tBodies[0], rows, 5,
		d.mode === 'off' || !d.mode ? 'DRS is off (ferry cluster set drs=manual|partial|full).'
			: 'No recommendation: the hosts are balanced within the tolerance.');
}

async function applyDrs(button, r) {
	button.disabled = true;
	try {
		const out = await api('POST', '/drs/apply', { id: r.id });
		notice(`DRS: ${r.vm} ${r.from} → ${r.to} queued as task ${out.tasks.join(', ')}.`, 'info');
	} catch (err) {
		notice(describe(err));
	}
	refresh();
}

function hostRow(h) {
	const status = !h.alive ? badge('down') : h.maintenance ? badge('maintenance')
		: h.entering_standby ? badge('entering standby', 'standby')
		: h.standby ? badge('standby') : badge('alive');
	const used = h.mem_mib ? Math.round(100 * h.free_mib / h.mem_mib) : 0;
	const toggle = () => {
		if (state.hosts.open.has(h.name))
			state.hosts.open.delete(h.name);
		else
			state.hosts.open.add(h.name);
		refresh();
	};
	return el('tr', { dataset: { host: h.name } },
		el('td', {}, el('a', { href: '#hosts', onclick: (e) => { e.preventDefault(); toggle(); } },
			el('b', {}, h.name)), el('div', { class: 'muted mono' }, h.address || '')),
		el('td', {}, status),
		el('td', { class: 'num' }, h.load === undefined ? '–' : Number(h.load).toFixed(2)),
		el('td', {}, el('div', { class: 'bar mem' }, el('span', { style: `width:${used}%` })),
			el('div', { class: 'progress-text' }, `${mib(h.free_mib)} of ${mib(h.mem_mib)}`)),
		el('td', { class: 'num' }, h.harts ?? '–'),
		el('td', { class: 'num' }, el('a', {
			href: '#vms', class: 'host-vms-link',
			onclick: () => { state.vms.host = h.name; state.vms.offset = 0; },
		}, String(h.vms ?? 0))),
		el('td', { class: 'num' }, `${h.migrations_running ?? 0} of ${h.migration_limit ?? '–'}`),
		el('td', { class: 'muted' }, when(h.last_seen)),
		el('td', { class: 'actions' }, el('button', {
			class: 'small admin-only maintenance',
			title: h.maintenance ? 'Let the wizard place VMs here again'
				: 'The wizard and vm create will refuse this host',
			onclick: (e) => setMaintenance(e.target, h.name, !h.maintenance),
		}, h.maintenance ? 'Exit maintenance' : 'Enter maintenance')));
}

async function setMaintenance(button, host, enabled) {
	button.disabled = true;
	try {
		await api('POST', `/hosts/${encodeURIComponent(host)}/maintenance`, { enabled });
		notice(`Host ${host} ${enabled ? 'is in maintenance' : 'left maintenance'}.`, 'info');
	} catch (err) {
		notice(describe(err));
	}
	refresh();
}

function hostVMsRow(h, list) {
	let content;
	if (!list)
		content = el('span', { class: 'muted' }, 'could not list the VMs');
	else if (!list.vms.length)
		content = el('span', { class: 'muted' }, 'no VMs');
	else
		content = el('div', { class: 'hostvms' },
			list.vms.map((v) => el('span', { class: 'vm', dataset: { vm: v.name } },
				v.name, ' ', badge(v.state))),
			list.total > list.vms.length ? el('a', {
				href: '#vms', onclick: () => { state.vms.host = h.name; state.vms.offset = 0; },
			}, `all ${list.total.toLocaleString()} →`) : null);
	return el('tr', { class: 'sub', dataset: { hostvms: h.name } }, el('td', {}, ''),
		el('td', { colspan: 8 }, content));
}

/* ---- VMs ----------------------------------------------------------------- */

async function loadVMs() {
	const p = state.vms;
	const r = await api('GET', '/vms' + qs({ offset: p.offset, limit: PAGE, q: p.q, host: p.host }));
	p.total = r.total;
	const chip = $('vms-host-filter');
	chip.hidden = !p.host;
	if (p.host)
		chip.replaceChildren('on host ' + p.host, el('button', {
			class: 'link', 'aria-label': 'Show every host',
			onclick: () => { p.host = ''; p.offset = 0; refresh(); },
		}, '×'));
	const rows = r.vms.map((v) => el('tr', { dataset: { vm: v.name } },
		el('td', {}, el('button', {
			class: 'link vm-open', title: 'Details and fault tolerance',
			onclick: () => openDetails(v.name),
		}, v.name)),
		el('td', { class: 'vm-host' }, v.host || '–'),
		el('td', {}, badge(v.state), v.state === 'exited' && v.exit_status !== null
			? el('span', { class: 'muted' }, ' status ' + v.exit_status) : null),
		el('td', { class: 'num' }, mib(v.mem_mib)),
		el('td', { class: 'num' }, v.smp ?? '–'),
		el('td', {}, v.ha || 'off'),
		el('td', { class: 'actions' }, el('button', {
			class: 'small admin-only migrate', disabled: v.state !== 'running',
			title: v.state === 'running' ? 'Choose a destination' : 'Only a running VM migrates',
			onclick: () => openWizard(v),
		}, 'Migrate…'))));
	fill($('vms-table').tBodies[0], rows, 7, p.q || p.host ? 'No VM matches.' : 'No VMs yet.');
	pager('vms-pager', p, refresh);
}

/* ---- a VM's details: fault tolerance ------------------------------------- */

/* The dialog shows GET /vms/NAME and its "ft" (docs/api.md), asked again
 * every second while it is open. */
async function openDetails(name) {
	state.details = name;
	$('vm-details-title').textContent = name;
	$('vm-details-sub').textContent = '';
	$('vm-ft').replaceChildren();
	$('vm-ft-history').replaceChildren();
	$('vm-details-error').textContent = '';
	$('vm-details').showModal();
	await loadDetails();
}

function closeDetails() {
	state.details = null;
	clearTimeout(state.detailsTimer);
	$('vm-details').close();
}

function fact(term, ...value) {
	return [el('dt', {}, term), el('dd', {}, ...value)];
}

function ftFacts(ft) {
	if (!ft)
		return [fact('State', badge('off', 'stopped'), ' (ferry vm ft enable NAME)')];
	const facts = [
		fact('State', badge(ft.state, ft.state)),
		fact('Primary', ft.primary || '–'),
		fact('Secondary', ft.secondary || 'none'),
	];
	if (ft.checkpoints_per_s !== undefined)
		facts.push(
			fact('Checkpoint rate', el('span', { class: 'ft-rate' },
				`${ft.checkpoints_per_s.toFixed(1)} /s`), ` (every ${ms(ft.epoch_ms)}, epoch ${ft.epoch})`),
			fact('Bytes per epoch', el('span', { class: 'ft-bytes' }, bytes(ft.bytes_per_epoch))),
			fact('Added output latency', el('span', { class: 'ft-latency' },
				`${ft.added_latency_ms.toFixed(1)} ms`), ` (to its epoch's end, then ${ft.commit_ms.toFixed(1)} ms to the acknowledgement)`),
			fact('Primary slowdown', el('span', { class: 'ft-slowdown' },
				`${ft.slowdown_pct.toFixed(1)} %`), ` paused (${ft.pause_ms.toFixed(2)} ms a checkpoint)`));
	if (ft.last_failover)
		facts.push(fact('Last failover', `${ft.last_failover.from} → ${ft.last_failover.to} at epoch ` +
			`${ft.last_failover.epoch}, ${when(ft.last_failover.at)}`));
	if (ft.error)
		facts.push(fact('Note', ft.error));
	return facts;
}

async function loadDetails() {
	const name = state.details;
	clearTimeout(state.detailsTimer);
	if (!name)
		return;
	try {
		const v = await api('GET', '/vms/' + encodeURIComponent(name));
		if (state.details !== name)
			return;
		$('vm-details-sub').replaceChildren(badge(v.state), ` on ${v.host || '–'}, ${mib(v.mem_mib)}, ` +
			`${v.smp ?? '–'} vCPUs, HA ${v.ha || 'off'}`,
		(v.disks || []).length ? `, disks ${v.disks.join(', ')}` : '',
		v.migration ? el('span', { class: 'vm-migration' }, ` · migration #${v.migration.id} ` +
			`${v.migration.state}, `, fromTo(v.migration)) : '',
		v.ha_waiting ? el('span', { class: 'vm-ha-waiting' }, ` · HA: ${v.ha_waiting}`) : '');
		$('vm-ft').replaceChildren(...ftFacts(v.ft).flat());
		const events = ((v.ft && v.ft.history) || []).slice().reverse().map((h) =>
			el('li', { dataset: { state: h.state } }, el('b', {}, h.state), ` ${when(h.at)}`,
				h.why ? ': ' + h.why : ''));
		$('vm-ft-history').replaceChildren(...(events.length ? events : [el('li', {}, 'none')]));
		$('vm-details-error').textContent = '';
	} catch (e) {
		$('vm-details-error').textContent = describe(e);
	}
	if (state.details === name)
		state.detailsTimer = setTimeout(loadDetails, 1000);
}

/* ---- the migration wizard ------------------------------------------------ */

async function openWizard(vm) {
	const w = { vm: vm.name, choice: null };
	state.wizard = w;
	$('wizard-title').textContent = 'Migrate ' + vm.name;
	$('wizard-sub').textContent = `Now on ${vm.host}, ${mib(vm.mem_mib)}. Asking the placement wizard…`;
	$('wizard-candidates').tBodies[0].replaceChildren();
	$('wizard-refused').replaceChildren();
	$('wizard-estimate-note').textContent = '';
	$('wizard-error').textContent = '';
	$('wizard-priority').value = 'standard';
	$('wizard-downtime').value = '';
	$('wizard-bandwidth').value = '';
	$('wizard-at').value = '';
	$('wizard-go').disabled = true;
	$('wizard').showModal();
	let rec;
	try {
		rec = await api('GET', `/vms/${encodeURIComponent(vm.name)}/recommend?limit=${WIZARD_ROWS}`);
	} catch (e) {
		$('wizard-error').textContent = describe(e);
		return;
	}
	if (state.wizard !== w)
		return;
	$('wizard-sub').textContent = `Now on ${rec.source}, ${mib(vm.mem_mib)}. ` +
		(rec.candidates.length ? 'Hosts ranked by free memory, then load.'
			: 'No host can take this VM now.');
	const rows = rec.candidates.map((c) => {
		const radio = el('input', {
			type: 'radio', name: 'dest', value: c.host, 'aria-label': 'Migrate to ' + c.host,
		});
		const row = el('tr', { class: 'candidate', dataset: { host: c.host } },
			el('td', {}, radio),
			el('td', { class: 'num' }, String(c.rank)),
			el('td', {}, el('b', {}, c.host)),
			el('td', { class: 'num' }, mib(c.free_mib)),
			el('td', { class: 'num' }, Number(c.load).toFixed(2)),
			el('td', { class: 'num' }, String(c.migrations_running ?? 0)),
			el('td', {}, c.estimate ? `~${ms(c.estimate.total_ms)}, downtime ~${ms(c.estimate.downtime_ms)}` : '–'));
		const choose = () => {
			w.choice = c.host;
			radio.checked = true;
			for (const r of $('wizard-candidates').tBodies[0].rows)
				r.classList.toggle('chosen', r === row);
			$('wizard-go').disabled = false;
			$('wizard-go').textContent = 'Migrate to ' + c.host;
		};
		row.addEventListener('click', choose);
		if (c.rank === 1)
			setTimeout(choose);
		return row;
	});
	const from = rec.candidates.length && rec.candidates[0].estimate && rec.candidates[0].estimate.from;
	$('wizard-estimate-note').textContent = from ? 'Estimates from ' + from + '.' : '';
	const more = (rec.candidates_total || 0) - rec.candidates.length;
	if (more > 0)
		rows.push(el('tr', {}, el('td', { colspan: 7, class: 'muted' },
			`and ${more.toLocaleString()} more hosts that can take it, ranked lower`)));
	fill($('wizard-candidates').tBodies[0], rows, 7, 'No candidate: see the reasons below.');
	const items = rec.refused.map((r) =>
		el('li', { dataset: { host: r.host } }, el('b', {}, r.host), ': ', r.reason));
	const moreRefused = (rec.refused_total || 0) - rec.refused.length;
	if (moreRefused > 0)
		items.push(el('li', {}, `and ${moreRefused.toLocaleString()} more refused hosts`));
	$('wizard-refused').replaceChildren(...(items.length ? items : [el('li', {}, 'none')]));
}

async function startMigration() {
	const w = state.wizard;
	if (!w || !w.choice)
		return;
	const body = { to: w.choice, priority: $('wizard-priority').value };
	const dt = $('wizard-downtime').value.trim();
	const at = $('wizard-at').value.trim();
	const bw = $('wizard-bandwidth').value.trim();
	if (dt)
		body.downtime_ms = parseInt(dt, 10);
	if (bw)
		body.bandwidth_mbps = parseInt(bw, 10);
	if (at && at !== 'now')
		body.at = at;
	$('wizard-go').disabled = true;
	try {
		const r = await api('POST', `/vms/${encodeURIComponent(w.vm)}/migrate`, body);
		$('wizard').close();
		state.wizard = null;
		notice(`Task ${r.task.id}: migrating ${w.vm} to ${w.choice} (${r.task.state}).`, 'info');
		location.hash = '#tasks';
		route();
	} catch (e) {
		$('wizard-error').textContent = describe(e);
		$('wizard-go').disabled = false;
	}
}

/* ---- tasks --------------------------------------------------------------- */

/* hosts, and for a storage move or a shared-nothing migration the
 * datastore the disks go to */
function fromTo(t) {
	const hosts = t.destination ? `${t.source || '?'} → ${t.destination}` : (t.source || '–');
	return t.datastore ? el('span', {}, hosts, ' · disks → ',
		el('b', { class: 'datastore' }, t.datastore)) : hosts;
}

function progressCell(t) {
	const p = t.progress || {};
	const pct = t.state === 'queued' ? 0 : (p.percent ?? 0);
	const text = [];
	if (t.state === 'queued')
		text.push(t.waiting || 'waiting for its turn');
	else {
		text.push(pct + ' %');
		if (p.phase)
			text.push(p.phase);
		if (p.transferred_bytes)
			text.push(bytes(p.transferred_bytes) + ' sent');
		if (p.rate_mbps)
			text.push(Math.round(p.rate_mbps) + ' Mbit/s');
		if (p.remaining_ms)
			text.push('~' + ms(p.remaining_ms) + ' left');
		if (t.yielding)
			text.push(t.yielding);
	}
	return el('td', {}, el('div', { class: 'bar', role: 'progressbar', 'aria-valuenow': pct },
		el('span', { style: `width:${pct}%` })),
	el('div', { class: 'progress-text' }, text.join(' · ')));
}

function cancelButton(t) {
	return el('button', {
		class: 'small danger admin-only cancel',
		onclick: async (e) => {
			e.target.disabled = true;
			try {
				await api('POST', `/tasks/${t.id}/cancel`, {});
				notice(`Task ${t.id}: cancel asked; the VM stays on ${t.source}.`, 'info');
			} catch (err) {
				notice(describe(err));
			}
			refresh();
		},
	}, 'Cancel');
}

async function loadTasks() {
	const p = state.tasks;
	const [running, queued, all] = await Promise.all([
		api('GET', '/tasks?state=running&limit=200'),
		api('GET', '/tasks?state=queued&limit=200'),
		api('GET', '/tasks' + qs({ offset: p.offset, limit: PAGE })),
	]);
	const active = running.tasks.concat(queued.tasks);
	fill($('active-table').tBodies[0], active.map((t) => el('tr', { dataset: { task: t.id } },
		el('td', { class: 'num' }, '#' + t.id),
		el('td', {}, el('b', {}, t.vm || '–')),
		el('td', {}, fromTo(t)),
		el('td', {}, badge(t.priority, t.priority === 'high' ? 'high' : '')),
		el('td', { class: 'task-state' }, badge(t.state, t.state === 'running' ? 'run' : t.state)),
		progressCell(t),
		el('td', { class: 'actions' }, t.kind === 'migrate' ? cancelButton(t) : null))),
	7, 'Nothing running or queued.');
	p.total = all.total;
	fill($('tasks-table').tBodies[0], all.tasks.map((t) => el('tr', { dataset: { task: t.id } },
		el('td', { class: 'num' }, '#' + t.id),
		el('td', {}, t.kind),
		el('td', {}, t.vm || '–'),
		el('td', {}, fromTo(t)),
		el('td', { class: 'task-state' }, badge(t.state, t.state === 'running' ? 'run' : t.state)),
		el('td', { class: 'muted' }, when(t.created)),
		el('td', { class: 'num' }, ms(t.total_ms)),
		el('td', { class: 'num' }, ms(t.downtime_ms)),
		el('td', { class: 'num muted' }, t.estimate
			? `${ms(t.estimate.total_ms)} / ${ms(t.estimate.downtime_ms)}` : '–'),
		el('td', {}, t.user || '–'),
		el('td', { class: 'details' }, t.error || t.waiting || ''))),
	11, 'No tasks yet.');
	pager('tasks-pager', p, refresh);
}

/* ---- audit --------------------------------------------------------------- */

function detailsText(r) {
	const d = r.details || {};
	if (r.action === 'migration.finished' || (d.destination && d.total_ms !== undefined))
		return `${d.source} → ${d.destination}, took ${ms(d.total_ms)}, downtime ${ms(d.downtime_ms)}` +
			(d.task ? `, task #${d.task}` : '');
	if (r.action === 'vm.create' && d.spec)
		return `on ${d.host}, ${mib(d.spec.mem_mib)}, ${d.spec.smp || 1} vCPU, kernel ${d.spec.kernel}` +
			(d.task ? `, task #${d.task}` : '');
	if (r.action === 'vm.migrate' && d.destination)
		return `to ${d.destination}, ${d.priority} priority, ${d.at}` + (d.task ? `, task #${d.task}` : '');
	const s = JSON.stringify(d);
	return s === '{}' ? '' : s.length > 240 ? s.slice(0, 240) + '…' : s;
}

async function loadAudit() {
	const p = state.audit;
	const r = await api('GET', '/audit' + qs({ offset: p.offset, limit: PAGE, vm: p.q }));
	p.total = r.total;
	fill($('audit-table').tBodies[0], r.records.map((a) => el('tr', { dataset: { audit: a.id } },
		el('td', { class: 'num' }, String(a.id)),
		el('td', { class: 'muted' }, when(a.time)),
		el('td', {}, a.user),
		el('td', { class: 'mono' }, a.from),
		el('td', { class: 'audit-action' }, el('b', {}, a.action)),
		el('td', { class: 'audit-target' }, a.target),
		el('td', {}, a.result === 'ok' ? badge('ok') : a.result === 'cancelled' ? badge('cancelled')
			: badge(a.result, 'error')),
		el('td', { class: 'details' }, detailsText(a)))),
	8, p.q ? 'No record for ' + p.q + '.' : 'The audit trail is empty.');
	pager('audit-pager', p, refresh);
}

async function verifyAudit() {
	const out = $('audit-verify-result');
	out.textContent = 'checking…';
	try {
		const v = await api('GET', '/audit/verify');
		out.replaceChildren(v.ok ? badge(`chain intact (${v.records} records)`, 'ok')
			: badge(`broken at #${v.first_bad}: ${v.reason}`, 'failed'));
	} catch (e) {
		out.textContent = describe(e);
	}
}

/* ---- start --------------------------------------------------------------- */

function start() {
	$('login-form').addEventListener('submit', async (e) => {
		e.preventDefault();
		$('login-error').textContent = '';
		const token = $('token').value.trim();
		try {
			await signIn(token);
		} catch (err) {
			state.token = null;
			if (err.status !== 401)
				$('login-error').textContent = describe(err);
		}
	});
	$('signout').addEventListener('click', () => signOut(''));
	$('notice-close').addEventListener('click', () => { $('notice').hidden = true; });
	$('wizard-cancel').addEventListener('click', () => { state.wizard = null; $('wizard').close(); });
	$('wizard-go').addEventListener('click', startMigration);
	$('vm-details-close').addEventListener('click', closeDetails);
	$('vm-details').addEventListener('close', () => { state.details = null; });
	$('audit-verify').addEventListener('click', verifyAudit);
	searchBox('hosts-q', state.hosts);
	searchBox('vms-q', state.vms);
	searchBox('audit-vm', state.audit);
	window.addEventListener('hashchange', route);
	if (state.token)
		signIn(state.token).catch((err) => {
			if (err.status !== 401)
				signOut(describe(err));
		});
	else
		signOut('');
}

start();
