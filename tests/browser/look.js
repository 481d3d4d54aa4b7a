/*
 * look.js - screenshots of the web console against any ferry-center, for a
 * person to look at (bench/scale.py --hold keeps one with 2,500 hosts and
 * 40,000 VMs up):  node look.js URL TOKEN OUTDIR [VM]
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

async function main() {
	const [url, token, out, vm] = process.argv.slice(2);
	fs.mkdirSync(out, { recursive: true });
	const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-chromium-'));
	const ctx = await chromium.launchPersistentContext(profile, {
		executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
		args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
		       '--disable-background-networking', '--disable-component-update', '--disable-sync'],
		viewport: { width: 1280, height: 900 },
	});
	const page = ctx.pages()[0] || await ctx.newPage();
	const t = Date.now();
	const took = (what) => process.stderr.write(`${what}: ${Date.now() - t} ms\n`);
	try {
		await page.goto(url + '/');
		await page.fill('#token', token);
		await page.click('#login-button');
		await page.waitForSelector('#hosts-table tr[data-host]', { timeout: 30000 });
		took('hosts shown');
		await page.screenshot({ path: path.join(out, 'hosts.png') });
		await page.click('nav a[data-view=vms]');
		await page.waitForSelector('#vms-table tr[data-vm]');
		await page.screenshot({ path: path.join(out, 'vms.png') });
		const next = await page.$('#vms-pager button:last-child:not([disabled])');
		if (next) {     /* a second page only where there is one */
			await next.click();
			await page.waitForTimeout(500);
			await page.screenshot({ path: path.join(out, 'vms-page2.png') });
		}
		if (vm) {
			await page.fill('#vms-q', vm);
			await page.waitForSelector(`#vms-table tr[data-vm="${vm}"]`);
			took('search');
			await page.click(`#vms-table tr[data-vm="${vm}"] button.migrate`);
			await page.waitForSelector('#wizard[open] tr.candidate', { timeout: 30000 });
			took('wizard');
			await page.screenshot({ path: path.join(out, 'wizard.png') });
			await page.click('#wizard-cancel');
		}
		await page.click('nav a[data-view=tasks]');
		await page.waitForSelector('#tasks-table tr[data-task]');
		await page.screenshot({ path: path.join(out, 'tasks.png') });
		await page.click('nav a[data-view=audit]');
		await page.waitForSelector('#audit-table tr[data-audit]');
		await page.screenshot({ path: path.join(out, 'audit.png') });
	} finally {
		await ctx.close();
		fs.rmSync(profile, { recursive: true, force: true });
	}
}
main().catch((e) => { process.stderr.write(String(e.stack || e) + '\n'); process.exit(1); });
