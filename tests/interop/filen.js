// Interop oracle for veilfs's Filen crypto: runs @filen/sdk 0.3.12's own crypto functions.
//
// stdin:  {"ops": [{"op": "...", ...}, ...]}
// stdout: {"results": [...]}, one result per op, in order. A function that throws yields
//         {"error": "<message>"} so the Rust side can assert that the SDK *rejects* something.
//
// Binary data travels as base64. Everything is batched so one node start-up serves a whole test.
"use strict"

const { FilenSDK } = require("@filen/sdk")
const utils = require("@filen/sdk/dist/node/crypto/utils.js")

// One SDK instance per distinct master-key list: `encrypt().metadata` without a key uses the
// list's last key and `decrypt().folderMetadata` without a key tries every key, which is how the
// SDK treats an account's list.
const sdks = new Map()
function sdkFor(masterKeys) {
	const id = JSON.stringify(masterKeys || [])
	if (!sdks.has(id)) {
		sdks.set(
			id,
			new FilenSDK({
				connectToSocket: false,
				metadataCache: false,
				masterKeys: masterKeys || undefined
			})
		)
	}
	return sdks.get(id)
}

const b64 = s => Buffer.from(s, "base64")

const ops = {
	async derive({ authVersion, password, salt }) {
		const r = await utils.generatePasswordAndMasterKeyBasedOnAuthVersion({
			rawPassword: password,
			authVersion,
			salt
		})
		return { masterKey: r.derivedMasterKeys, loginPassword: r.derivedPassword }
	},
	async encryptMetadata({ plaintext, key, version, masterKeys }) {
		const args = { metadata: plaintext }
		if (key !== undefined) args.key = key
		if (version !== undefined) args.version = version
		return { ciphertext: await sdkFor(masterKeys).crypto().encrypt().metadata(args) }
	},
	async decryptMetadata({ ciphertext, key }) {
		return { plaintext: await sdkFor().crypto().decrypt().metadata({ metadata: ciphertext, key }) }
	},
	// The SDK's "try every master key" path (returns name "" when no key works).
	async decryptFolderMetadata({ ciphertext, masterKeys }) {
		const r = await sdkFor(masterKeys).crypto().decrypt().folderMetadata({ metadata: ciphertext })
		return { name: r.name }
	},
	async encryptData({ data, key, version }) {
		const enc = await sdkFor().crypto().encrypt().data({ data: b64(data), key, version })
		return { data: Buffer.from(enc).toString("base64") }
	},
	async decryptData({ data, key, version }) {
		const dec = await sdkFor().crypto().decrypt().data({ data: b64(data), key, version })
		return { data: Buffer.from(dec).toString("base64") }
	},
	async nameHash({ name, authVersion, privateKey }) {
		const hmacKey = privateKey ? await utils.generatePrivateKeyHMAC(privateKey) : undefined
		return { hash: await utils.hashFileName({ name, authVersion, hmacKey }) }
	},
	async searchHashes({ name, privateKey }) {
		const hmacKey = await utils.generatePrivateKeyHMAC(privateKey)
		return { hashes: await utils.generateSearchIndexHashes({ input: name, hmacKey }) }
	},
	async hmacKey({ privateKey }) {
		return { key: (await utils.generatePrivateKeyHMAC(privateKey)).toString("hex") }
	}
}

async function main() {
	const chunks = []
	for await (const c of process.stdin) chunks.push(c)
	const req = JSON.parse(Buffer.concat(chunks).toString("utf-8"))
	const results = []
	for (const o of req.ops) {
		const fn = ops[o.op]
		if (!fn) throw new Error(`unknown op ${o.op}`)
		try {
			results.push(await fn(o))
		} catch (e) {
			results.push({ error: String(e && e.message ? e.message : e) })
		}
	}
	// Exit only once the pipe has taken everything: process.exit() right after a large write
	// to a pipe would cut the output at 64 KiB.
	await new Promise(resolve => process.stdout.write(JSON.stringify({ results }), resolve))
}

main().then(
	() => process.exit(0),
	e => {
		process.stderr.write(String(e && e.stack ? e.stack : e))
		process.exit(1)
	}
)
