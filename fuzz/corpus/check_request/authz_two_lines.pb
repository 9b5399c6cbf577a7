
Â
?

	127.0.0.1øÓ"*spiffe://cluster.local/ns/shop/sa/frontend

	127.0.0.1™u"êç
9264858893451243761GET"/orders/42?expand=items*orders.example2httpRHTTP/1.1j‘


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

authorizationBearer a

authorizationBearer b