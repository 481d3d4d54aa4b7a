/*
 * drs.test.js - the web console's DRS panel, in Debian's headless Chromium
 * (playwright-core), on a lab where DRS (manual) recommends a move.
 *
 * Run by tests/integration/test_drs.py (test_drs_console) inside the
 * lab's client namespace, with CENTER_URL, TOKEN, TOKEN_RO, VM (the VM DRS
 * recommends moving), TO (its destination), SHOTS and CHROMIUM.
 *
 * Steps: signed in as admin, the hosts view shows DRS in manual mode and
 * the recommendation for VM with its destination and reason; a read-only
 * token sees it without the Apply button; the admin's Apply queues it (the
 * notice names the task). Prints {"task": ID} for the Python side, which
 * checks the task and where the VM ends up through the API.
 */
'use strict';

const path = require('path');
const { chromium } = require('playwright-core');

const env = (k) => {
	if (!process.env[k])
		throw new Error(`drs.test.js: ${k} is not set`);
	return process.env[k];
};
const CENTER = env('CENTER_URL'), TOKEN = env('TOKEN'), TOKEN_RO = env('TOKEN_RO');
const VM = env('VM'), TO = env('TO'), SHOTS = env('SHOTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 30000;

function step(text) {
	process.stderr.write(`[drs.test] ${text}\n`);
}

async function signIn(browser, token) {
	const page = await browser.newPage();
	await page.goto(CENTER + '/#hosts');
	await page.fill('#token', token);
	await page.click('#login-button');
	return page;
}

async function main() {
	const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
	try {
		step('read-only: the recommendation without an Apply button');
		const ro = await signIn(browser, TOKEN_RO);
		const roRow = ro.locator(`#drs-table tr[data-vm="${VM}"]`);
		await roRow.waitFor({ timeout: WAIT });
		if (await roRow.locator('button.drs-apply').isVisible())
			throw new Error('a read-only token sees the Apply button');
		await ro.close();

		step('admin: DRS manual, the recommendation with its destination and reason');
		const page = await signIn(browser, TOKEN);
		await page.waitForFunction(() =>
			document.querySelector('#drs-summary').textContent.includes('mode manual'),
		null, { timeout: WAIT });
		const row = page.locator(`#drs-table tr[data-vm="${VM}"]`);
		await row.waitFor({ timeout: WAIT });
		const text = await row.textContent();
		if (!text.includes(`→ ${TO}`) || !text.includes('imbalance'))
			throw new Error(`the recommendation reads "${text}"`);
		await page.screenshot({ path: path.join(SHOTS, 'drs-recommendation.png'), fullPage: true });

		step('Apply queues the migration');
		await row.locator('button.drs-apply').click();
		await page.waitForFunction(() => !document.querySelector('#notice').hidden &&
			/queued as task \d+/.test(document.querySelector('#notice-text').textContent),
		null, { timeout: WAIT });
		const notice = await page.textContent('#notice-text');
		await page.screenshot({ path: path.join(SHOTS, 'drs-applied.png'), fullPage: true });
		const task = Number(/queued as task (\d+)/.exec(notice)[1]);
		process.stdout.write(JSON.stringify({ task }) + '\n');
	} finally {
		await browser.close();
	}
}

main().catch((e) => {
	process.stderr.write(`[drs.test] FAILED: ${e.stack || e}\n`);
	process.exit(1);
});
