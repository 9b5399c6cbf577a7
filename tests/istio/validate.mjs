// Validates Istio objects against Istio's published schemas (@kubernetes-models/istio): every YAML
// document in the files named on the command line must be an Istio kind this script knows, and
// must pass. Prints one line a document; exits 1 on the first file with a failure (after listing
// every failure in it). kubernetes-validate only warns about such kinds, hence this script.
import { readFileSync } from 'node:fs';
import yaml from 'js-yaml';
import * as networkingV1alpha3 from '@kubernetes-models/istio/networking.istio.io/v1alpha3';
import * as networkingV1 from '@kubernetes-models/istio/networking.istio.io/v1';
import * as securityV1 from '@kubernetes-models/istio/security.istio.io/v1';
import * as extensionsV1alpha1 from '@kubernetes-models/istio/extensions.istio.io/v1alpha1';

const kinds = {
  'networking.istio.io/v1alpha3': networkingV1alpha3,
  'networking.istio.io/v1': networkingV1,
  'security.istio.io/v1': securityV1,
  'extensions.istio.io/v1alpha1': extensionsV1alpha1,
};

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node validate.mjs FILE...');
  process.exit(2);
}
let failures = 0;
for (const file of files) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, 'utf8')).filter((d) => d !== null);
  } catch (e) {
    console.error(`FAIL ${file}: not YAML: ${e.message}`);
    failures++;
    continue;
  }
  if (docs.length === 0) {
    console.error(`FAIL ${file}: no document`);
    failures++;
  }
  for (const doc of docs) {
    const what = `${file} ${doc?.apiVersion}/${doc?.kind} ${doc?.metadata?.name}`;
    const Model = kinds[doc?.apiVersion]?.[doc?.kind];
    if (!Model) {
      console.error(`FAIL ${what}: not an Istio kind this validator knows`);
      failures++;
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`ok ${what}`);
    } catch (e) {
      console.error(`FAIL ${what}: ${e.message}`);
      failures++;
    }
  }
}
process.exit(failures === 0 ? 0 : 1);
