/*
 * console.test.js - drives ferry-center's web console in Debian's headless
 * Chromium (playwright-core, no downloaded browser) the way an
 * administrator would, and checks what the page shows.
 *
 * Run by tests/integration/test_console.py inside the lab's client
 * namespace, with the environment:
 *   CENTER_URL   ferry-center's URL          VM       a running VM's name
 *   TOKEN        an admin token              SOURCE   the host it runs on
 *   TOKEN_RO     a read-only token           SHOTS    where screenshots go
 *   CHROMIUM     the browser (/usr/bin/chromium)
 *
 * Steps: a wrong token is refused on the login form; the admin sees every
 * host alive and the VM on its host; the VMs view finds the VM by search;
 * the wizard lists candidates and refused hosts with reasons; we pick the
 * last candidate (not the preselected first) and start the migration with
 * a bandwidth cap, so that it lasts a few seconds; the tasks view shows the
 * task running with its progress (between 0 and 100 %, never going back)
 * until it reads `succeeded`; the VM
 * then shows on the chosen host; the audit trail holds the request
 * (vm.migrate) and its result (migration.finished) and its chain verifies;
 * the source host put in maintenance from the hosts page is refused by the
 * wizard "in maintenance"; a migration scheduled for later (back to the
 * source, out of maintenance again) is cancelled from the page; a read-only
 * token sees no action buttons. With STORAGE_VM and STORAGE_TASK (a storage
 * move of that VM's disks into datastore STORAGE_DS, scheduled for later),
 * the tasks view names that datastore in the task's rows (active and all
 * tasks) and the VM's details name it in its migration. With FT_VM, first that fault-tolerant VM's
 * details show it protected with its hosts and figures (checkpoint rate,
 * bytes per epoch, added output latency, primary slowdown). On success it
 * prints one line of JSON ({"destination", "task", "cancelled_task", "ft"})
 * for the Python side to check against the API.
 */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (k) => {
	if (!process.env[k])
		throw new Error(`console.test.js: ${k} is not set`);
	return process.env[k];
};
const CENTER = env('CENTER_URL'), TOKEN = env('TOKEN'), TOKEN_RO = env('TOKEN_RO');
const VM = env('VM'), SOURCE = env('SOURCE'), SHOTS = env('SHOTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FT_VM = process.env.FT_VM;   /* optional: a fault-tolerant VM whose details are checked */
const STORAGE_VM = process.env.STORAGE_VM, STORAGE_TASK = process.env.STORAGE_TASK;   /* optional */
const STORAGE_DS = process.env.STORAGE_DS;
const BANDWIDTH = '8';         /* Mbit/s: about 4 s for the idle 64 MiB guest (4 MB sent) */
const WAIT = 20000;            /* ms for the page to show something */
const MIGRATION_WAIT = 90000;  /* ms for a migration to finish */

function step(text) {
	process.stderr.write(`[console.test] ${text}\n`);
}

async function shot(page, name) {
	await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

async function signIn(page, token) {
	await page.fill('#token', token);
	await page.click('#login-button');
}

async function main() {
	fs.mkdirSync(SHOTS, { recursive: true });
	const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-chromium-'));
	const context = await chromium.launchPersistentContext(profile, {
		executablePath: CHROMIUM,
		headless: true,
		args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
		       '--disable-background-networking', '--disable-component-update', '--disable-sync'],
		viewport: { width: 1280, height: 800 },
	});
	context.setDefaultTimeout(WAIT);
	const page = context.pages()[0] || await context.newPage();
	const pageErrors = [];
	page.on('pageerror', (e) => pageErrors.push(e.message));
	const result = {};
	try {
		step('login: a wrong token is refused');
		await page.goto(CENTER + '/');
		await page.waitForSelector('#login-form');
		await signIn(page, 'not-a-token');
		await page.waitForFunction(() => /refused/.test(document.querySelector('#login-error').textContent));
		await shot(page, '00-login-refused');

		step('login as admin: hosts alive, the VM on its host');
		await signIn(page, TOKEN);
		await page.waitForSelector('#view-hosts:not([hidden]) tr[data-host]');
		const hosts = await page.$$eval('#hosts-table tr[data-host]', (rows) => rows.map((r) => ({
			name: r.dataset.host, status: r.cells[1].textContent.trim() })));
		if (hosts.length < 2 || hosts.some((h) => h.status !== 'alive'))
			throw new Error('hosts view: want every host alive, got ' + JSON.stringify(hosts));
		await page.waitForSelector(`tr[data-hostvms="${SOURCE}"] .vm[data-vm="${VM}"]`);
		await page.waitForFunction(() => /\d+ hosts/.test(document.querySelector('#summary').textContent));
		await shot(page, '01-hosts');

		if (FT_VM) {
			step(`VM details: ${FT_VM}'s fault tolerance figures`);
			await page.click('nav a[data-view=vms]');
			await page.fill('#vms-q', FT_VM);
			await page.click(`#vms-table tr[data-vm="${FT_VM}"] button.vm-open`);
			await page.waitForSelector('#vm-details[open] #vm-ft .badge.protected');
			/* the rate is measured over a second: wait for a figure */
			await page.waitForFunction(() => {
				const r = document.querySelector('#vm-ft .ft-rate');
				return r && parseFloat(r.textContent) > 0;
			});
			const ft = await page.$eval('#vm-ft', (dl) => {
				const facts = {};
				const dts = dl.querySelectorAll('dt');
				for (const dt of dts)
					facts[dt.textContent] = dt.nextElementSibling.textContent;
				return facts;
			});
			for (const k of ['Primary', 'Secondary', 'Checkpoint rate', 'Bytes per epoch',
					 'Added output latency', 'Primary slowdown'])
				if (!ft[k] || ft[k] === '–')
					throw new Error(`VM details: no ${k} shown: ${JSON.stringify(ft)}`);
			if (!/^[\d.]+ (B|KiB|MiB)$/.test(ft['Bytes per epoch']) || !/^[\d.]+ ms/.test(ft['Added output latency']) ||
			    !/^[\d.]+ %/.test(ft['Primary slowdown']))
				throw new Error('VM details: figures not as expected: ' + JSON.stringify(ft));
			result.ft = { primary: ft.Primary, secondary: ft.Secondary };
			await shot(page, '01b-ft-details');
			await page.click('#vm-details-close');
			await page.waitForSelector('#vm-details:not([open])', { state: 'attached' });
		}

		step('VMs view: search finds the VM, on its host');
		await page.click('nav a[data-view=vms]');
		await page.fill('#vms-q', VM);
		const vmRow = `#vms-table tr[data-vm="${VM}"]`;
		await page.waitForSelector(vmRow);
		const shown = await page.$eval(`${vmRow} .vm-host`, (td) => td.textContent);
		if (shown !== SOURCE)
			throw new Error(`VMs view: ${VM} shows on ${shown}, want ${SOURCE}`);
		await shot(page, '02-vms');

		step('wizard: candidates ranked, refused hosts with reasons');
		await page.click(`${vmRow} button.migrate`);
		await page.waitForSelector('#wizard[open] tr.candidate');
		const candidates = await page.$$eval('#wizard tr.candidate', (rows) => rows.map((r) => r.dataset.host));
		const refused = await page.$$eval('#wizard-refused li', (li) => li.map((l) => l.textContent));
		if (candidates.includes(SOURCE))
			throw new Error('wizard: the source is a candidate: ' + candidates);
		if (!refused.some((r) => r.startsWith(SOURCE + ':') && /runs there/.test(r)))
			throw new Error('wizard: the source is not refused with its reason: ' + refused);
		const dest = candidates[candidates.length - 1];
		await page.click(`#wizard tr.candidate[data-host="${dest}"]`);
		/* a capped link makes the migration last seconds, so that the
		 * page's live progress can be watched */
		await page.fill('#wizard-bandwidth', BANDWIDTH);
		await page.waitForFunction((d) => document.querySelector('#wizard-go').textContent === 'Migrate to ' + d &&
			!document.querySelector('#wizard-go').disabled, dest);
		await shot(page, '03-wizard');
		await page.click('#wizard-go');

		step(`migration to ${dest}: the task's progress until it succeeds`);
		await page.waitForSelector('#view-tasks:not([hidden])');
		const note = await page.textContent('#notice-text');
		const m = /^Task (\d+):/.exec(note);
		if (!m)
			throw new Error('no task announced after starting the migration: ' + note);
		const task = Number(m[1]);
		const row = `#tasks-table tr[data-task="${task}"]`;
		await page.waitForSelector(row);
		let sawActive = false, sawRunning = false, lastPct = 0, progressTexts = new Set();
		const deadline = Date.now() + MIGRATION_WAIT;
		for (;;) {
			const st = await page.$eval(`${row} .task-state`, (td) => td.textContent.trim());
			const active = await page.$(`#active-table tr[data-task="${task}"]`);
			if (active) {
				const pct = Number(await active.$eval('[role=progressbar]', (b) => b.getAttribute('aria-valuenow')));
				if (pct < lastPct)
					throw new Error(`task ${task}: progress went back from ${lastPct} to ${pct}`);
				lastPct = pct;
				const activeState = await active.$eval('.task-state', (td) => td.textContent.trim());
				if (activeState === 'running' && pct > 0 && pct < 100) {
					progressTexts.add(await active.$eval('.progress-text', (d) => d.textContent));
					if (!sawRunning)
						await shot(page, '04-task-running');
					sawRunning = true;
				}
				sawActive = true;
			}
			if (st === 'succeeded')
				break;
			if (st === 'failed' || st === 'cancelled') {
				const why = await page.$eval(`${row} .details`, (td) => td.textContent);
				throw new Error(`task ${task} ${st}: ${why}`);
			}
			if (Date.now() > deadline)
				throw new Error(`task ${task} still ${st} after ${MIGRATION_WAIT} ms`);
			await page.waitForTimeout(250);
		}
		if (!sawRunning)
			throw new Error(`task ${task}: never seen running with its progress between 0 and 100 %`);
		step('progress seen: ' + [...progressTexts].join(' | '));
		await page.waitForSelector(`#active-table tr[data-task="${task}"]`, { state: 'detached' });
		await shot(page, '05-task-succeeded');

		step(`the VM shows on ${dest}`);
		await page.click('nav a[data-view=vms]');
		await page.waitForFunction(([sel, d]) => {
			const td = document.querySelector(sel);
			return td && td.textContent === d;
		}, [`${vmRow} .vm-host`, dest]);
		await page.click('nav a[data-view=hosts]');
		await page.waitForSelector(`tr[data-hostvms="${dest}"] .vm[data-vm="${VM}"]`);
		if (await page.$(`tr[data-hostvms="${SOURCE}"] .vm[data-vm="${VM}"]`))
			throw new Error(`hosts view: ${VM} still listed on ${SOURCE}`);
		await shot(page, '06-hosts-after');

		step('audit trail: the request and its result; the chain verifies');
		await page.click('nav a[data-view=audit]');
		await page.fill('#audit-vm', VM);
		const auditRow = (action) => `//tr[td[@class="audit-action"]/b[text()="${action}"]]` +
			`[td[@class="audit-target"][text()="${VM}"]]`;
		await page.waitForSelector(auditRow('vm.migrate'));
		await page.waitForSelector(auditRow('migration.finished'));
		const finished = await page.textContent(auditRow('migration.finished'));
		if (!finished.includes(`${SOURCE} → ${dest}`) || !finished.includes(`#${task}`))
			throw new Error('audit: migration.finished does not name the hosts and task: ' + finished);
		await page.click('#audit-verify');
		await page.waitForFunction(() => /chain intact/.test(document.querySelector('#audit-verify-result').textContent));
		await shot(page, '07-audit');

		step(`maintenance: ${SOURCE} entered from the hosts page, refused by the wizard`);
		await page.click('nav a[data-view=hosts]');
		const srcRow = `#hosts-table tr[data-host="${SOURCE}"]`;
		await page.click(`${srcRow} button.maintenance`);
		await page.waitForFunction((sel) => {
			const r = document.querySelector(sel);
			return r && r.cells[1].textContent.trim() === 'maintenance';
		}, srcRow);
		await shot(page, '08-maintenance');
		await page.click('nav a[data-view=vms]');
		await page.waitForSelector(vmRow);
		await page.click(`${vmRow} button.migrate`);
		await page.waitForSelector(`#wizard[open] #wizard-refused li[data-host="${SOURCE}"]`);
		const why = await page.textContent(`#wizard-refused li[data-host="${SOURCE}"]`);
		if (!/in maintenance/.test(why))
			throw new Error(`wizard: ${SOURCE} in maintenance refused as: ${why}`);
		await page.click('#wizard-cancel');
		await page.click('nav a[data-view=hosts]');
		await page.click(`${srcRow} button.maintenance`);
		await page.waitForFunction((sel) => {
			const r = document.querySelector(sel);
			return r && r.cells[1].textContent.trim() === 'alive';
		}, srcRow);

		step('a migration scheduled for later, cancelled from the page');
		await page.click('nav a[data-view=vms]');
		await page.waitForSelector(vmRow);
		await page.click(`${vmRow} button.migrate`);
		await page.waitForSelector(`#wizard[open] tr.candidate[data-host="${SOURCE}"]`);
		await page.waitForFunction(() => !document.querySelector('#wizard-go').disabled);
		await page.fill('#wizard-at', '+30m');
		await page.click('#wizard-go');
		await page.waitForSelector('#view-tasks:not([hidden])');
		const m2 = /^Task (\d+):/.exec(await page.textContent('#notice-text'));
		const later = Number(m2 && m2[1]);
		const activeRow = `#active-table tr[data-task="${later}"]`;
		await page.waitForFunction((sel) => {
			const r = document.querySelector(sel);
			return r && /scheduled for/.test(r.textContent);
		}, activeRow);
		await shot(page, '09-scheduled');
		await page.click(`${activeRow} button.cancel`);
		await page.waitForFunction((sel) => {
			const td = document.querySelector(sel);
			return td && td.textContent.trim() === 'cancelled';
		}, `#tasks-table tr[data-task="${later}"] .task-state`);
		await shot(page, '10-cancelled');

		if (STORAGE_TASK) {
			step(`storage move: task ${STORAGE_TASK} names datastore ${STORAGE_DS}`);
			for (const table of ['active-table', 'tasks-table']) {
				const sel = `#${table} tr[data-task="${STORAGE_TASK}"]`;
				await page.waitForSelector(sel);
				const ds = await page.$eval(sel, (r) => {
					const b = r.querySelector('.datastore');
					return [b && b.textContent, r.textContent];
				});
				if (ds[0] !== STORAGE_DS || !ds[1].includes(`disks → ${STORAGE_DS}`))
					throw new Error(`${table}: task ${STORAGE_TASK} does not name datastore ${STORAGE_DS}: ${ds[1]}`);
			}
			await page.$eval(`#active-table tr[data-task="${STORAGE_TASK}"]`, (r) => r.scrollIntoView());
			await shot(page, '10b-storage-task');
			await page.click('nav a[data-view=vms]');
			await page.fill('#vms-q', STORAGE_VM);
			await page.click(`#vms-table tr[data-vm="${STORAGE_VM}"] button.vm-open`);
			await page.waitForSelector('#vm-details[open] .vm-migration .datastore');
			const mig = await page.textContent('#vm-details .vm-migration');
			if (!mig.includes(`#${STORAGE_TASK}`) || !mig.includes(`disks → ${STORAGE_DS}`))
				throw new Error(`VM details: ${STORAGE_VM}'s migration shown as: ${mig}`);
			await shot(page, '10c-storage-vm-details');
			await page.click('#vm-details-close');
			await page.waitForSelector('#vm-details:not([open])', { state: 'attached' });
			await page.fill('#vms-q', VM);   /* the VMs view as the steps below want it */
		}

		step('a read-only token: no action buttons');
		await page.click('#signout');
		await signIn(page, TOKEN_RO);
		await page.waitForSelector('#readonly-banner:not([hidden])');
		await page.click('nav a[data-view=vms]');
		await page.waitForSelector(vmRow);
		if (await page.isVisible(`${vmRow} button.migrate`))
			throw new Error('read-only token: the Migrate button is visible');
		await page.click('nav a[data-view=hosts]');
		await page.waitForSelector(`#hosts-table tr[data-host="${SOURCE}"]`);
		if (await page.isVisible(`#hosts-table tr[data-host="${SOURCE}"] button.maintenance`))
			throw new Error('read-only token: the maintenance button is visible');
		await page.click('nav a[data-view=tasks]');
		await page.waitForSelector(`#tasks-table tr[data-task="${task}"]`);
		await shot(page, '11-readonly');

		if (pageErrors.length)
			throw new Error('errors in the page: ' + pageErrors.join('; '));
		Object.assign(result, { destination: dest, task, cancelled_task: later });
	} catch (e) {
		await shot(page, 'failure').catch(() => {});
		throw e;
	} finally {
		await context.close();
		fs.rmSync(profile, { recursive: true, force: true });
	}
	process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
	process.stderr.write(`[console.test] FAILED: ${e.stack || e}\n`);
	process.exit(1);
});
