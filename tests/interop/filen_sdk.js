// Drives the real @filen/sdk 0.3.12 against a `veilfs serve` on loopback.
//
// stdin: {"port": N, "email": "...", "password": "...", "register": bool, "ops": [...]}
// stdout: {"results": [...]}, one per op, in order.
//
// The SDK's node transport dials port 443 over TLS whatever its host URLs say; the shim below
// (reference §13.1) keeps the host names and opens plain TCP to the test server instead.
// File contents are generated from (size, seed) on both sides: byte i = (i * 7 + seed) % 251.
"use strict"

const net = require("net")
const crypto = require("crypto")
const os = require("os")
const path = require("path")
const fs = require("fs")

function readStdin() {
	return JSON.parse(fs.readFileSync(0, "utf-8"))
}

function content(size, seed) {
	const b = Buffer.alloc(size)
	for (let i = 0; i < size; i++) b[i] = (i * 7 + seed) % 251
	return b
}

const sha256 = b => crypto.createHash("sha256").update(b).digest("hex")

async function main() {
	const input = readStdin()
	const client = require("@filen/sdk/dist/node/api/client.js")
	client.APIClientDefaults.gatewayURLs = ["https://gateway.veilfs.test"]
	client.APIClientDefaults.ingestURLs = ["https://ingest.veilfs.test"]
	client.APIClientDefaults.egestURLs = ["https://egest.veilfs.test"]
	// Fail fast: a wrong answer must fail the test, not retry for an hour.
	client.APIClientDefaults.maxRetries = 3
	client.APIClientDefaults.retryTimeout = 200
	client.keepAliveAgent.createConnection = () => net.connect(input.port, "127.0.0.1")
	const { FilenSDK } = require("@filen/sdk")
	const tmpPath = fs.mkdtempSync(path.join(os.tmpdir(), "veilfs-filen-sdk-"))
	const sdk = new FilenSDK({ connectToSocket: false, metadataCache: false, tmpPath })
	try {
		if (input.register) await sdk.register({ email: input.email, password: input.password })
		await sdk.login({ email: input.email, password: input.password })
		const results = []
		for (const op of input.ops) {
			try {
				results.push(await run(sdk, op))
			} catch (e) {
				results.push({ error: String((e && e.message) || e) })
			}
		}
		process.stdout.write(JSON.stringify({ results }))
	} finally {
		fs.rmSync(tmpPath, { recursive: true, force: true })
	}
}

async function run(sdk, op) {
	const f = sdk.fs()
	switch (op.op) {
		case "mkdir":
			await f.mkdir({ path: op.path })
			return { ok: true }
		case "write": {
			const data = content(op.size, op.seed)
			await f.writeFile({ path: op.path, content: data })
			return { ok: true, sha256: sha256(data) }
		}
		case "read": {
			const data = await f.readFile({ path: op.path })
			return { size: data.length, sha256: sha256(data) }
		}
		case "stat": {
			const s = await f.stat({ path: op.path })
			return { size: s.size, type: s.type, name: s.name }
		}
		case "readdir":
			return { names: (await f.readdir({ path: op.path })).sort() }
		case "rename":
			await f.rename({ from: op.from, to: op.to })
			return { ok: true }
		case "unlink":
			await f.unlink({ path: op.path, permanent: !!op.permanent })
			return { ok: true }
		case "trash": {
			const items = await sdk.cloud().listTrash()
			return { names: items.map(i => i.name).sort() }
		}
		case "share": {
			const s = await f.stat({ path: op.path })
			await sdk.cloud().shareItemsToUser({
				files: [],
				directories: [{ uuid: s.uuid, metadata: { name: s.name } }],
				email: op.email
			})
			return { ok: true }
		}
		case "changePassword":
			await sdk.user().changePassword({ currentPassword: op.current, newPassword: op.new })
			return { ok: true }
		case "statfs": {
			const s = await f.statfs()
			return { used: s.used, max: s.max }
		}
		default:
			throw new Error("unknown op " + op.op)
	}
}

main().catch(e => {
	process.stderr.write(String((e && e.stack) || e) + "\n")
	process.exit(1)
})
