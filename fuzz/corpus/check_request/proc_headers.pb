î
é


:authorityorders.example

:methodGET
 
:path/orders/42?expand=items

:schemehttp


user-agent
curl/8.5.0

accept*/*

x-forwarded-protohttp
4
x-request-id$4f1c7b9e-1d2a-4c8e-9a51-0b6e2f3d7a10
‹
authorizationùBearer eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6Ilc4RzBEeEczWWVseS00SXQ1Y3dwR3hBaDI0SEhkNGtwWlRpc2tzdGpWWGMifQ.eyJpc3MiOiJodHRwOi8vYmF0b24tc3RzLmZ1enoiLCJzdWIiOiJhbGljZSIsImF1ZCI6ImZyb250ZW5kIiwiaWF0IjoxNzk1MzI2MjYyLCJleHAiOjIxMTA2ODYyNjIsImp0aSI6ImJYbElkUXA4QnRtSWk3RnpuWkJZeFEiLCJzY29wZSI6Im9yZGVycy5yZWFkIG9yZGVycy53cml0ZSIsIm1heV9hY3QiOnsic3ViIjoic3BpZmZlOi8vY2x1c3Rlci5sb2NhbC9ucy9zaG9wL3NhL2Zyb250ZW5kIn19.mKodNu7RYudF-l_is5m4f4udAUZYGTw5_5zlceibVtxebp_txciU2vFKLWPIMsXRVzVl7XRrOdGz3kM23F0obgJa
envoy.filters.http.ext_procB
@
source.principal,*spiffe://cluster.local/ns/shop/sa/frontend